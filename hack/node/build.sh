#!/usr/bin/env bash
# Build (or reuse) the real upstream node programs used by the e2e tests:
# kubelet, containerd + containerd-shim-runc-v2 + ctr, runc, crictl and the CNI
# plugins loopback, dummy, tap and host-local (tap: for kernels built without
# CONFIG_DUMMY, see hack/runtime.py).
#
#   hack/node/build.sh      build if not cached; print the output dir last
#
# Output: ${RTDRA_CACHE:-~/.cache/rt-dra}/node-<key>/
#   bin/  kubelet containerd containerd-shim-runc-v2 ctr runc crictl
#   cni/  loopback dummy tap host-local
#   VERSIONS  versions, Go, and the seconds each binary took to build
#             (cold when the Go build cache is empty: GOCACHE=$(mktemp -d) ...)
# <key> hashes this script, every go.mod/go.sum it builds from and the Go
# version: changing a pin builds a new directory; an unchanged one is reused.
#
# Versions (each pinned by a committed go.mod/go.sum, resolved from the Go
# module proxy; no upstream source is vendored or copied):
#   kubelet     k8s.io/kubernetes v1.37.2 - from hack/controlplane/go.mod, the
#               control plane's own module, so node and control plane can never
#               run different Kubernetes versions (one pin, one --regen).
#   containerd, containerd-shim-runc-v2, ctr
#               github.com/containerd/containerd/v2 v2.4.2 (hack/node/containerd):
#               NRI v0.12.3, CDI v1.1.1, cri-api v0.37.0.
#   runc        github.com/opencontainers/runc v1.3.7 (hack/node/runc): >= 1.2
#               applies the OCI process.scheduler (SCHED_DEADLINE). CGO on with
#               tag seccomp: links Debian's libseccomp dynamically, so the host
#               needs libseccomp2 (installed on Debian by default).
#   crictl      sigs.k8s.io/cri-tools v1.37.0 (hack/node/critools).
#   CNI         github.com/containernetworking/plugins v1.10.0 (hack/node/cni).
# One small module per upstream: each upstream is built against its own
# dependency versions (one shared module would let MVS raise them across
# projects, building combinations nobody tested).
#
# Host packages: runc needs libseccomp-dev and pkg-config; when missing they
# are installed with apt-get (after `apt-get update`) - needs root on Debian.
#
# The whole script is one function called on its last line: bash then parses
# it completely before running, so editing this file during a long build
# cannot make the running build execute half-old, half-new lines.
set -euo pipefail

main() {
  HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  HACK="$(dirname "$HERE")"
  CACHE_ROOT="${RTDRA_CACHE:-$HOME/.cache/rt-dra}"

  GO="${GO:-$(command -v go || true)}"
  [ -n "$GO" ] || GO=/usr/local/go/bin/go
  if [ ! -x "$GO" ]; then
    echo "build.sh: no Go toolchain found (set GO=/path/to/go)" >&2
    exit 3
  fi

  # Everything through env vars (no `go env -w`). -mod=readonly: build exactly
  # the committed pins, never rewrite go.mod/go.sum.
  export GOTOOLCHAIN=local
  export GOFLAGS="-buildvcs=false -mod=readonly"
  export GO111MODULE=on

  log() { printf '[node] %s\n' "$*" >&2; }

  MODULE_FILES=(
    "$HACK/controlplane/go.mod" "$HACK/controlplane/go.sum"
    "$HERE/containerd/go.mod" "$HERE/containerd/go.sum"
    "$HERE/runc/go.mod" "$HERE/runc/go.sum"
    "$HERE/critools/go.mod" "$HERE/critools/go.sum"
    "$HERE/cni/go.mod" "$HERE/cni/go.sum"
  )
  KEY="$({ cat "$HERE/build.sh" "${MODULE_FILES[@]}"; "$GO" env GOVERSION; } | sha256sum | cut -c1-12)"
  OUT="$CACHE_ROOT/node-$KEY"

  BINS=(kubelet containerd containerd-shim-runc-v2 ctr runc crictl)
  CNI_PLUGINS=(loopback dummy tap host-local)

  have_binaries() {
    [ -f "$OUT/.complete" ] || return 1
    local b
    for b in "${BINS[@]}"; do [ -x "$OUT/bin/$b" ] || return 1; done
    for b in "${CNI_PLUGINS[@]}"; do [ -x "$OUT/cni/$b" ] || return 1; done
  }

  if have_binaries; then
    echo "$OUT"
    exit 0
  fi

  mkdir -p "$CACHE_ROOT"
  # One builder at a time (parallel test sessions, `make` + pytest ...).
  exec 9>"$CACHE_ROOT/.build-node-$KEY.lock"
  if ! flock -n 9; then
    log "another build of node-$KEY is running; waiting for it"
    flock 9
  fi
  if have_binaries; then
    echo "$OUT"
    exit 0
  fi

  # runc's seccomp support links libseccomp through cgo and finds it with pkg-config.
  need_pkgs=()
  for p in libseccomp-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
  done
  if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
      log "runc needs ${need_pkgs[*]} (libseccomp headers, pkg-config); install them and re-run"
      exit 3
    fi
    log "installing ${need_pkgs[*]} with apt-get (runc: cgo + seccomp)"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2
  fi

  TMP="$OUT.tmp.$$"
  rm -rf "$TMP"
  mkdir -p "$TMP/bin" "$TMP/cni"
  trap 'rm -rf "$TMP"' EXIT
  BUILD_LOG="$CACHE_ROOT/build-node-$KEY.log"
  : > "$BUILD_LOG"
  log "building kubelet, containerd, containerd-shim-runc-v2, ctr, runc, crictl, CNI plugins with $("$GO" version)"
  log "the first build takes minutes on few cores (full log: $BUILD_LOG)"

  modver() { (cd "$1" && "$GO" list -m -f '{{.Version}}' "$2"); }
  K8S_VERSION="$(modver "$HACK/controlplane" k8s.io/kubernetes)"
  CONTAINERD_VERSION="$(modver "$HERE/containerd" github.com/containerd/containerd/v2)"
  RUNC_VERSION="$(modver "$HERE/runc" github.com/opencontainers/runc)"
  CRICTL_VERSION="$(modver "$HERE/critools" sigs.k8s.io/cri-tools)"
  CNI_VERSION="$(modver "$HERE/cni" github.com/containernetworking/plugins)"

  declare -A SECONDS_FOR=()
  all_start=$(date +%s)

  # step NAME MODULE_DIR CGO TAGS LDFLAGS OUTDIR PACKAGE...
  step() {
    local name=$1 dir=$2 cgo=$3 tags=$4 ldflags=$5 outdir=$6
    shift 6
    local t0 rc
    t0=$(date +%s)
    log "$name: go build (CGO_ENABLED=$cgo${tags:+, tags $tags})"
    echo "=== $name" >> "$BUILD_LOG"
    set +e
    (cd "$dir" && CGO_ENABLED=$cgo "$GO" build -v -trimpath -tags "$tags" -ldflags "$ldflags" -o "$outdir/" "$@") 2>&1 |
      tee -a "$BUILD_LOG" |
      { n=0; while IFS= read -r line; do
          n=$((n + 1))
          if [ $((n % 50)) = 0 ]; then
            printf '[node] %s: %5d packages built, %4ds (at %s)\n' "$name" "$n" $(( $(date +%s) - t0 )) "$line" >&2
          fi
        done; }
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" != 0 ]; then
      log "$name: go build FAILED (exit $rc); last lines of $BUILD_LOG:"
      tail -n 40 "$BUILD_LOG" >&2
      exit "$rc"
    fi
    SECONDS_FOR[$name]=$(( $(date +%s) - t0 ))
    log "$name: built in ${SECONDS_FOR[$name]}s"
  }

  VPKG=k8s.io/component-base/version
  K8S_MINOR="$(echo "$K8S_VERSION" | sed -E 's/^v1\.([0-9]+)\..*/\1/')"
  step kubelet "$HACK/controlplane" 0 "" \
    "-s -w -X $VPKG.gitVersion=$K8S_VERSION -X $VPKG.gitMajor=1 -X $VPKG.gitMinor=$K8S_MINOR -X $VPKG.gitTreeState=clean" \
    "$TMP/bin" k8s.io/kubernetes/cmd/kubelet

  CD=github.com/containerd/containerd/v2
  CD_LDFLAGS="-s -w -X $CD/version.Version=$CONTAINERD_VERSION -X $CD/version.Package=$CD"
  # containerd's own Makefile tags for a static build; the shim adds no_grpc (it speaks ttrpc only).
  step "containerd+ctr" "$HERE/containerd" 0 "urfave_cli_no_docs osusergo netgo static_build" "$CD_LDFLAGS" \
    "$TMP/bin" "$CD/cmd/containerd" "$CD/cmd/ctr"
  step containerd-shim-runc-v2 "$HERE/containerd" 0 "urfave_cli_no_docs osusergo netgo static_build no_grpc" "$CD_LDFLAGS" \
    "$TMP/bin" "$CD/cmd/containerd-shim-runc-v2"

  step runc "$HERE/runc" 1 seccomp "-s -w -X main.version=${RUNC_VERSION#v}" \
    "$TMP/bin" github.com/opencontainers/runc

  step crictl "$HERE/critools" 0 "" "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "$TMP/bin" sigs.k8s.io/cri-tools/cmd/crictl

  CNI=github.com/containernetworking/plugins
  step cni-plugins "$HERE/cni" 0 "" "-s -w -X $CNI/pkg/utils/buildversion.BuildVersion=$CNI_VERSION" \
    "$TMP/cni" "$CNI/plugins/main/loopback" "$CNI/plugins/main/dummy" "$CNI/plugins/main/tap" \
    "$CNI/plugins/ipam/host-local"

  total=$(( $(date +%s) - all_start ))
  {
    echo "kubernetes=$K8S_VERSION"
    echo "containerd=$CONTAINERD_VERSION"
    echo "runc=$RUNC_VERSION"
    echo "crictl=$CRICTL_VERSION"
    echo "cni_plugins=$CNI_VERSION"
    echo "go=$("$GO" env GOVERSION)"
    echo "key=$KEY"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "nproc=$(nproc)"
    # Seconds per `go build` in this run. The Go build cache (GOCACHE) is shared
    # with the control-plane build: after it, kubelet mostly links cached packages.
    for n in kubelet "containerd+ctr" containerd-shim-runc-v2 runc crictl cni-plugins; do
      echo "build_seconds_${n}=${SECONDS_FOR[$n]}"
    done
    echo "build_seconds=$total"
  } > "$TMP/VERSIONS"
  touch "$TMP/.complete"
  # Swap with two renames: a test session starting meanwhile finds either the old
  # or the new complete directory (running programs keep their deleted inodes).
  OLD="$OUT.old.$$"
  if [ -e "$OUT" ]; then mv "$OUT" "$OLD"; fi
  mv "$TMP" "$OUT"
  rm -rf "$OLD"
  trap - EXIT
  log "build times (seconds, this run):"
  for n in kubelet "containerd+ctr" containerd-shim-runc-v2 runc crictl cni-plugins; do
    printf '[node]   %-26s %5s\n' "$n" "${SECONDS_FOR[$n]}" >&2
  done
  log "all built in ${total}s into $OUT"
  echo "$OUT"
}

main "$@"
