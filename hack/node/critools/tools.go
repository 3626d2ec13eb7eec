//go:build tools

// Package critools pins sigs.k8s.io/cri-tools v1.37.0 for hack/node/build.sh: `go mod tidy` keeps
// every module these programs need in go.mod/go.sum. Nothing here is compiled.
package critools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
