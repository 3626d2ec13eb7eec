"""The OCI container state a runtime hands its hooks, and which pod it belongs to.

A hook gets ``{"ociVersion", "id", "status", "pid", "bundle", "annotations"}``
on stdin. The Kubernetes identity is only in the annotations, under
containerd's CRI keys (``io.kubernetes.cri.*``) or CRI-O's
(``io.kubernetes.pod.*``/``io.kubernetes.container.name``); both are read.
Sandbox (pause) containers carry no container name and are not ours.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypedDict


class OciState(TypedDict, total=False):
    ociVersion: str
    id: str
    status: str
    pid: int
    bundle: str
    annotations: dict[str, str]


#: Our field -> annotation keys, containerd's CRI first, then CRI-O's.
KEYS: Final = {
    "pod_uid": ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"),
    "namespace": ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"),
    "pod_name": ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"),
    "container": ("io.kubernetes.cri.container-name", "io.kubernetes.container.name"),
}
SANDBOX_TYPE_KEYS: Final = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType")


class BadState(ValueError):
    """The OCI state is not one we can act on; the message says why."""


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """One container of one pod, as the runtime started it."""

    pod_uid: str
    namespace: str
    pod_name: str
    container: str
    container_id: str
    pid: int

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod_name} container {self.container}"


def _first(annotations: Mapping[str, str], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = annotations.get(key)
        if value:
            return value
    return ""


def is_sandbox(annotations: Mapping[str, str]) -> bool:
    return _first(annotations, SANDBOX_TYPE_KEYS) == "sandbox"


def parse_state(raw: bytes | str) -> OciState:
    try:
        state = json.loads(raw)
    except ValueError as err:
        raise BadState(f"OCI state is not JSON: {err}") from None
    if not isinstance(state, dict):
        raise BadState("OCI state is not a JSON object")
    return state  # type: ignore[return-value]


def container_ref(state: OciState) -> ContainerRef:
    """The pod and container the state describes; :class:`BadState` if it cannot tell."""
    annotations = state.get("annotations") or {}
    if is_sandbox(annotations):
        raise BadState("sandbox container: nothing to reserve")
    found = {name: _first(annotations, keys) for name, keys in KEYS.items()}
    missing = [keys[0] for name, keys in KEYS.items() if not found[name]]
    if missing:
        raise BadState(f"OCI annotations lack {', '.join(missing)} (not a Kubernetes container?)")
    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        raise BadState(f"OCI state has no process id (status {state.get('status', '?')})")
    return ContainerRef(
        pod_uid=found["pod_uid"],
        namespace=found["namespace"],
        pod_name=found["pod_name"],
        container=found["container"],
        container_id=str(state.get("id", "")),
        pid=pid,
    )
