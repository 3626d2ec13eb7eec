"""Generated code: written by the scripts in hack/proto/, never edited by hand."""
