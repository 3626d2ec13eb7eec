# RT-DRA developer commands. Everything runs from the project's own virtualenv
# (.venv), which `make install` creates from scratch.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

.PHONY: install test test-fast lint bench bench-rt chaos soak demo up down node cluster-up cluster-down controlplane e2e clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstalls only when the packaging changed (a stamp in the venv).
STAMP := $(VENV)/.installed
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

install: $(STAMP)

# The benchmarks' optional extra (matplotlib, for bench-rt's plot), on top of the above.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,dev,bench]'
	touch $@

# The whole suite: unit, property, real-kernel and real-control-plane tests.
test: $(STAMP)
	$(BIN)/pytest

# Unit and property tests only (no root, no control plane).
test-fast: $(STAMP)
	$(BIN)/pytest -m 'not kernel and not e2e'

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy rtdra webhook agent extender
	$(BIN)/lint-imports

# Benchmarks print tables with ratios to a floor measured in the same run.
bench: $(BENCH_STAMP)
	$(BIN)/rtdra simulate --nodes 10 --cpus 8 --load 0.6 --load 0.8 --load 1.0
	$(PY) bench/bench_extender.py
	$(PY) bench/bench_webhook.py
	$(PY) bench/bench_agent.py
	$(PY) bench/bench_nri.py
	$(PY) bench/bench_nri_start.py
	$(PY) bench/bench_scheduling.py
	$(PY) bench/bench_node.py --mode nri
	$(PY) bench/bench_node.py --mode cdi
	$(PY) bench/bench_rt.py

# The guarantee, measured (docs/benchmark-rt.md): rt-app's periodic jobs in pods on the real node under CPU
# hogs - an RT-DRA pod against a plain pod, the node filled to its capacity, constrained deadlines at the EDF
# limit. Root; about three minutes; tables, per-job CSV and a CDF plot in .bench/rt/.
bench-rt: $(BENCH_STAMP)
	$(PY) bench/bench_rt.py

# Faults during a burst of RT pods (extender, kube-apiserver, agent killed; etcd and
# the extender stopped; the webhook down; a node deleted), then the invariants: no
# CPU overcommitted, nothing leaked, nothing stuck. A few minutes; needs root and Go.
chaos: $(STAMP)
	$(PY) hack/chaos.py

# Steady churn of RT pods (SOAK_MINUTES, default 60) with the invariants checked every
# 10 s and each component's memory and open files sampled: a leak shows as a slope.
SOAK_MINUTES ?= 60
soak: $(STAMP)
	$(PY) hack/chaos.py --soak $(SOAK_MINUTES)

# The main job: the whole chain on a local control plane, the four demo apps in
# extender mode and the fifth (rt-test5) with the real node in DRA mode,
# a report of placements and kernel reservations; then everything is torn down.
# Needs root (real SCHED_DEADLINE reservations on this machine) and Go.
demo: $(STAMP)
	$(PY) demo/run.py

# The whole stack left running in the background - control plane, webhook,
# extender, agent and this machine as a real node (kubelet, containerd, runc) -
# for your own RT pods. The last line printed is the admin kubeconfig.
# MODE=nri (default), cdi, or dra (the node serves RT pods through DRA: docs/dra-node.md).
# INSTALL=kustomize or INSTALL=helm: the webhook, extender and agent in pods on the node instead, from the
# image built from the Dockerfile, installed by kubectl apply -k or helm install (hack/install.py).
MODE ?= nri
INSTALL ?=
up: $(STAMP)
	@$(PY) hack/playground.py up --dir .rtdra --mode $(MODE) $(if $(INSTALL),--install $(INSTALL))

down: $(STAMP)
	@$(PY) hack/playground.py down --dir .rtdra

# Build (or reuse from ~/.cache/rt-dra) the upstream kube-apiserver,
# kube-scheduler, kube-controller-manager and etcd. The first build compiles
# Kubernetes from source: about 10 minutes on 2 cores.
controlplane: $(STAMP)
	$(PY) hack/cluster.py build

# Build (or reuse from ~/.cache/rt-dra) the real node's upstream programs -
# kubelet, containerd, containerd-shim-runc-v2, ctr, runc, crictl, CNI plugins -
# and the node image rt-dra.local/node-base:1. Installs Debian's libseccomp-dev,
# pkg-config and busybox-static with apt-get when missing (root).
node: $(STAMP)
	$(PY) hack/nodebins.py
	$(PY) hack/images.py

# A local control plane in the background; the last line printed is the
# admin kubeconfig (.cluster/kubeconfig).
cluster-up: $(STAMP)
	$(PY) hack/cluster.py up --dir .cluster

cluster-down: $(STAMP)
	$(PY) hack/cluster.py down --dir .cluster

# Only the end-to-end tests (real control plane).
e2e: $(STAMP)
	$(BIN)/pytest -m e2e

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
