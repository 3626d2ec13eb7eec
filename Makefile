# RT-DRA developer commands. Everything runs from the project's own virtualenv
# (.venv), which `make install` creates from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: install test test-fast lint bench demo cluster-up cluster-down e2e clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(PY)
	$(BIN)/pip install --quiet -e '.[test,dev]'

# The whole suite: unit, property, real-kernel and real-control-plane tests.
test: $(PY)
	$(BIN)/pytest

# Unit and property tests only (no root, no control plane).
test-fast: $(PY)
	$(BIN)/pytest -m 'not kernel and not e2e'

lint: $(PY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy rtdra
	$(BIN)/lint-imports

bench: $(PY)
	$(BIN)/rtdra simulate --nodes 10 --cpus 8 --load 0.6 --load 0.8 --load 1.0

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
