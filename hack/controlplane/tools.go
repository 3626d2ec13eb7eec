//go:build tools

// Package controlplane exists only so that `go mod tidy` keeps every module
// needed to build these upstream programs in go.mod/go.sum. Nothing here is
// compiled; hack/controlplane/build.sh builds the programs with `go build`.
package controlplane

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	// kubelet is built by hack/node/build.sh from this same module, so the node
	// always runs the control plane's Kubernetes version.
	_ "k8s.io/kubernetes/cmd/kubelet"
)
