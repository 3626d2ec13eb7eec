//go:build tools

// Package cni pins github.com/containernetworking/plugins v1.10.0 for hack/node/build.sh: `go mod tidy` keeps
// every module these programs need in go.mod/go.sum. Nothing here is compiled.
package cni

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/dummy"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/main/tap"
)
