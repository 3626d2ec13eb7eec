#!/usr/bin/env bash
# Build (or reuse) the helm CLI the install tests run (tests/e2e/test_install.py, make up INSTALL=helm).
#
#   hack/helm/build.sh      build if not cached; print the helm binary's path last
#
# Output: ${RTDRA_CACHE:-~/.cache/rt-dra}/helm-<key>/helm (+ VERSIONS: version, Go, build seconds)
# <key> hashes this script, go.mod/go.sum and the Go version.
#
# Version: helm.sh/helm/v3 v3.22.0, pinned by the committed go.mod/go.sum beside this script and
# resolved from the Go module proxy (no upstream source vendored or copied). CGO off: a static binary.
# One function called on the last line, as hack/node/build.sh (edits during a build are harmless).
set -euo pipefail

main() {
  HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  CACHE_ROOT="${RTDRA_CACHE:-$HOME/.cache/rt-dra}"
  GO="${GO:-$(command -v go || true)}"
  [ -n "$GO" ] || GO=/usr/local/go/bin/go
  if [ ! -x "$GO" ]; then
    echo "helm/build.sh: no Go toolchain found (set GO=/path/to/go)" >&2
    exit 3
  fi
  export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false -mod=readonly" GO111MODULE=on

  KEY="$({ cat "$HERE/build.sh" "$HERE/go.mod" "$HERE/go.sum"; "$GO" env GOVERSION; } | sha256sum | cut -c1-12)"
  OUT="$CACHE_ROOT/helm-$KEY"
  if [ -f "$OUT/.complete" ] && [ -x "$OUT/helm" ]; then
    echo "$OUT/helm"
    exit 0
  fi
  mkdir -p "$CACHE_ROOT"
  exec 9>"$CACHE_ROOT/.build-helm-$KEY.lock"
  flock 9
  if [ -f "$OUT/.complete" ] && [ -x "$OUT/helm" ]; then
    echo "$OUT/helm"
    exit 0
  fi
  TMP="$OUT.tmp.$$"
  rm -rf "$TMP"
  mkdir -p "$TMP"
  trap 'rm -rf "$TMP"' EXIT
  BUILD_LOG="$CACHE_ROOT/build-helm-$KEY.log"
  VERSION="$(cd "$HERE" && "$GO" list -m -f '{{.Version}}' helm.sh/helm/v3)"
  printf '[helm] building helm %s with %s (log: %s)\n' "$VERSION" "$("$GO" version)" "$BUILD_LOG" >&2
  t0=$(date +%s)
  # helm prints its version from these variables (otherwise "v3.x-dev" with no commit).
  LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$VERSION"
  (cd "$HERE" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$LDFLAGS" -o "$TMP/helm" helm.sh/helm/v3/cmd/helm) \
    > "$BUILD_LOG" 2>&1 || { cat "$BUILD_LOG" >&2; exit 1; }
  {
    echo "helm=$VERSION"
    echo "go=$("$GO" env GOVERSION)"
    echo "seconds.helm=$(( $(date +%s) - t0 ))"
  } > "$TMP/VERSIONS"
  touch "$TMP/.complete"
  rm -rf "$OUT"
  mv "$TMP" "$OUT"
  trap - EXIT
  echo "$OUT/helm"
}

main "$@"
