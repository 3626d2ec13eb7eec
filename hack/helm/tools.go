//go:build tools

// Package helm pins helm.sh/helm/v3 v3.22.0 for hack/helm/build.sh: `go mod tidy` keeps every module
// the helm CLI needs in go.mod/go.sum. Nothing here is compiled.
package helm

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
