"""kube-scheduler's extender protocol (``k8s.io/kube-scheduler/extender/v1``), written down once.

The Go types carry no json tags, so the envelope keys are the Go field names
in CamelCase (``Pod``, ``NodeNames``, ``FailedNodes`` ...), while the objects
inside (``v1.Pod``, ``v1.NodeList``) use the usual lowercase Kubernetes JSON.
kube-scheduler's ``HTTPExtender`` (pkg/scheduler/extender.go) sends:

- filter / prioritize: ``ExtenderArgs``; with ``nodeCacheCapable: true`` only
  ``NodeNames`` is set (``Nodes`` is ``null``), otherwise only ``Nodes`` (a
  ``NodeList`` built without TypeMeta, so ``{"metadata": {}, "items": [...]}``;
  ``items`` may be ``null``);
- bind: ``ExtenderBindingArgs``.

It reads ``ExtenderFilterResult`` (``NodeNames`` when node-cache-capable and
not null, else ``Nodes.items``), a bare ``HostPriorityList`` array, and
``ExtenderBindingResult``. Any HTTP status but 200 is an error to it.

:func:`parse_args` and :func:`parse_binding_args` check the shape and raise
:class:`BadRequest` with a message that names the field; everything else in the
extender works with these typed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict

#: ``extenderv1.MinExtenderPriority`` / ``MaxExtenderPriority``.
MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 10


class NodeList(TypedDict, total=False):
    """``v1.NodeList`` as ``HTTPExtender`` builds it (no apiVersion/kind)."""

    apiVersion: str
    kind: str
    metadata: dict[str, Any]
    items: list[dict[str, Any]] | None


class ExtenderArgs(TypedDict):
    Pod: dict[str, Any]
    Nodes: NodeList | None
    NodeNames: list[str] | None


"""Filter and prioritize request."""

FailedNodesMap = dict[str, str]


class ExtenderFilterResult(TypedDict):
    Nodes: NodeList | None
    NodeNames: list[str] | None
    FailedNodes: FailedNodesMap
    FailedAndUnresolvableNodes: FailedNodesMap
    Error: str


"""Filter reply."""


class HostPriority(TypedDict):
    Host: str
    Score: int


"""One entry of the prioritize reply (a ``HostPriorityList``, i.e. a JSON array)."""


class ExtenderBindingArgs(TypedDict):
    PodName: str
    PodNamespace: str
    PodUID: str
    Node: str


"""Bind request."""


class ExtenderBindingResult(TypedDict):
    Error: str


"""Bind reply."""


class BadRequest(ValueError):
    """The body is not what kube-scheduler sends; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Candidates:
    """Filter/prioritize arguments, checked: the pod and the candidate nodes in the order sent.

    ``nodes`` holds the full Node objects when the scheduler sent a NodeList
    (not node-cache-capable) and is ``None`` when it sent names only.
    """

    pod: Mapping[str, Any]
    names: tuple[str, ...]
    nodes: tuple[Mapping[str, Any], ...] | None

    @property
    def node_cache_capable(self) -> bool:
        return self.nodes is None


def parse_args(body: Any) -> Candidates:
    """Check an ``ExtenderArgs`` body."""
    if not isinstance(body, Mapping):
        raise BadRequest(f"the body must be a JSON object (ExtenderArgs), got {_kind(body)}")
    pod = body.get("Pod")
    if not isinstance(pod, Mapping):
        raise BadRequest(f'"Pod" must be a v1.Pod object, got {_kind(pod)}')
    if not isinstance(pod.get("metadata") or {}, Mapping):
        raise BadRequest('"Pod.metadata" must be an object')
    names_value = body.get("NodeNames")
    nodes_value = body.get("Nodes")
    if names_value is not None:
        if not isinstance(names_value, list) or not _all_strings(names_value):
            raise BadRequest('"NodeNames" must be a list of node names')
        return Candidates(pod=pod, names=tuple(names_value), nodes=None)
    if nodes_value is not None:
        if not isinstance(nodes_value, Mapping):
            raise BadRequest(f'"Nodes" must be a v1.NodeList object, got {_kind(nodes_value)}')
        items = nodes_value.get("items") or []
        if not isinstance(items, list):
            raise BadRequest('"Nodes.items" must be a list of v1.Node objects')
        node_names: list[str] = []
        for i, node in enumerate(items):
            name = (node.get("metadata") or {}).get("name") if isinstance(node, Mapping) else None
            if not isinstance(name, str) or not name:
                raise BadRequest(f'"Nodes.items[{i}]" must be a v1.Node with metadata.name')
            node_names.append(name)
        return Candidates(pod=pod, names=tuple(node_names), nodes=tuple(items))
    raise BadRequest('ExtenderArgs needs "NodeNames" (nodeCacheCapable: true) or "Nodes" (false); both are null')


def parse_binding_args(body: Any) -> ExtenderBindingArgs:
    """Check an ``ExtenderBindingArgs`` body."""
    if not isinstance(body, Mapping):
        raise BadRequest(f"the body must be a JSON object (ExtenderBindingArgs), got {_kind(body)}")
    for key in ("PodName", "PodNamespace", "Node"):
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise BadRequest(f'"{key}" must be a non-empty string, got {_kind(value)}')
    uid = body.get("PodUID", "")
    if not isinstance(uid, str):
        raise BadRequest(f'"PodUID" must be a string, got {_kind(uid)}')
    return {"PodName": body["PodName"], "PodNamespace": body["PodNamespace"], "PodUID": uid, "Node": body["Node"]}


def filter_result(
    candidates: Candidates,
    passed: list[str],
    failed: FailedNodesMap,
    unresolvable: FailedNodesMap,
    error: str = "",
) -> ExtenderFilterResult:
    """The reply in the same mode as the request: names back, or the Node objects back."""
    if candidates.nodes is None:
        return {
            "Nodes": None,
            "NodeNames": passed,
            "FailedNodes": failed,
            "FailedAndUnresolvableNodes": unresolvable,
            "Error": error,
        }
    keep = set(passed)
    items = [dict(node) for name, node in zip(candidates.names, candidates.nodes, strict=True) if name in keep]
    return {
        "Nodes": {"metadata": {}, "items": items},
        "NodeNames": None,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": unresolvable,
        "Error": error,
    }


def reason_text(reason: str) -> str:
    """A failure message safe for kube-scheduler, which uses it as a Go format string.

    kube-scheduler passes filter reasons to ``EventRecorder.Eventf`` and a bind
    ``Error`` to ``fmt.Errorf`` as the *format*, so ``10.0% free`` would reach
    the pod's events as ``10.0%!f(MISSING)ree``. Writing "percent" reads the
    same in events, pod conditions and logs.
    """
    return reason.replace("%", " percent")


def _all_strings(values: list[Any]) -> bool:
    """Whether every item is a string: ``str.join`` checks each one in C (thousands of node names per call)."""
    try:
        "".join(values)
    except TypeError:
        return False
    return True


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
