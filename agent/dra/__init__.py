"""DRA mode: the node's CPUs as devices of a ResourceSlice pool, and the kubelet DRA plugin.

Follows ``resource.k8s.io/v1`` with consumable capacity (``rtdra.dra`` names the contract) and
kubelet's ``k8s.io/kubelet`` v0.37 plugin APIs (``dra/v1``, ``dra/v1beta1``,
``pluginregistration/v1``; stubs from ``hack/proto/gen.sh``):

- :mod:`agent.dra.claims` - what a prepared claim is, the capacity re-check, the persisted state
  (no gRPC, no Kubernetes client: the hook path reads it);
- :mod:`agent.dra.plugin` - the gRPC services kubelet calls and the registration socket;
- :mod:`agent.dra.slices` - publishing the pool (through the Kubernetes API).

Deliberately left out: the resource health service (``v1alpha1.DRAResourceHealth``: kubelet
copes with a plugin that lacks it), and NRI delivery of claims (the CDI hook carries them).
"""
