//go:build tools

// Package runc pins github.com/opencontainers/runc v1.3.7 for hack/node/build.sh: `go mod tidy` keeps
// every module these programs need in go.mod/go.sum. Nothing here is compiled.
package runc

import (
	_ "github.com/opencontainers/runc"
)
