"""Node objects that look Ready to kube-scheduler, with no kubelet behind them.

The control plane runs no kubelet of its own: tests that only need scheduling
(the extender's filter/prioritize/bind, the webhook) create Nodes here. Pods
bound to one stay Pending unless something plays the node (``hack/nodesim.py``);
a real kubelet + containerd node registers itself instead (``hack/node.py``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from hack.k8sbins import K8S_VERSION

#: The conditions kubelet reports on a healthy node, as ``(type, status, reason)``.
HEALTHY_CONDITIONS = (
    ("Ready", "True", "KubeletReady"),
    ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID"),
)


def node_status(name: str, resources: Mapping[str, str]) -> dict[str, Any]:
    """The ``status`` a healthy kubelet would write for ``name`` with ``resources`` (capacity = allocatable)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": reason,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        for kind, value, reason in HEALTHY_CONDITIONS
    ]
    return {
        "capacity": dict(resources),
        "allocatable": dict(resources),
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "kubeletVersion": K8S_VERSION,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "none://0",
            "kernelVersion": os.uname().release,
            "osImage": "rt-dra e2e",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }


def create_node(
    api: client.ApiClient,
    name: str,
    cpu: str = "8",
    memory: str = "16Gi",
    labels: Mapping[str, str] | None = None,
    extended: Mapping[str, str] | None = None,
    pods: str = "110",
    taints: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """Create a Node that looks Ready to kube-scheduler (there is no kubelet).

    status.capacity/allocatable and a Ready condition are written through the
    status subresource. ``extended`` adds extended resources, e.g.
    ``{"example.com/dev": "4"}``. Returns the Node as a dict.
    """
    core = client.CoreV1Api(api)
    lbl = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    lbl.update(labels or {})
    spec: dict[str, Any] = {}
    if taints:
        spec["taints"] = [dict(t) for t in taints]
    core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": lbl}, "spec": spec})
    resources = {"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "100Gi"}
    resources.update(extended or {})
    core.patch_node_status(name, {"status": node_status(name, resources)})
    node = core.read_node(name)
    stale = [t for t in (node.spec.taints or []) if t.key.startswith("node.kubernetes.io/")]
    if stale:  # TaintNodesByCondition re-enabled by someone: drop not-ready & co.
        keep = [api.sanitize_for_serialization(t) for t in (node.spec.taints or []) if t not in stale]
        core.patch_node(name, {"spec": {"taints": keep or None}})
        node = core.read_node(name)
    result: dict[str, Any] = api.sanitize_for_serialization(node)
    return result


def delete_node(api: client.ApiClient, name: str) -> None:
    """Delete the Node ``name``; one already gone is fine."""
    try:
        client.CoreV1Api(api).delete_node(name)
    except ApiException as e:
        if e.status != 404:
            raise
