//go:build tools

// Package containerd pins github.com/containerd/containerd/v2 v2.4.2 for hack/node/build.sh: `go mod tidy` keeps
// every module these programs need in go.mod/go.sum. Nothing here is compiled.
package containerd

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
