"""The JSON Patch that turns a validated real-time pod into one the rest of RT-DRA can run.

:func:`build_patch` is a pure function: the pod as the apiserver sent it, the
request the core parsed from it, and the configuration go in; a list of RFC
6902 operations and a list of warnings come out. It computes the pod's desired
state and emits an operation only where the pod differs from it, so the patch
of a pod that already went through the webhook is empty - which is what makes
``reinvocationPolicy: IfNeeded`` safe and a copied, already-mutated pod
harmless.

What it writes (docs/webhook.md has the full table):

- ``rt.resource.example.com/spec``: the canonical request (ours alone);
- ``RT_RUNTIME_NS``/``RT_DEADLINE_NS``/``RT_PERIOD_NS``/``RT_CPUS`` in each RT
  container's environment;
- ``rt.resource.example.com/dl: 1`` in the requests and limits of *each* RT
  container: it routes the pod to the extender, and it is the resource of the
  agent's kubelet device plugin, whose allocation gives that container the CDI
  device (and so the hooks that apply the reservation) - kubelet allocates per
  container, so every RT container needs its own;
- optionally ``schedulerName``, a toleration, a bandwidth resource for ResourceQuota;
- optionally (DRA mode's scoring, :func:`scoring_marker`) ``rt.resource.example.com/dra: 1`` on
  the first container of any pod with ResourceClaims, RT annotations or not.

It assumes the pod's shape was checked (:func:`webhook.admission.check_pod_shape`)
and does no validation of the reservations themselves: that is the core's job.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rtdra import dra, names
from rtdra.bandwidth import BW_UNIT, format_ns, percent
from rtdra.request import PodRequest, Reservation
from webhook.config import Toleration, WebhookConfig
from webhook.reviews import PatchOperation

DEFAULT_SCHEDULER: Final = "default-scheduler"
#: A deadline at most this fraction of the period earns a warning.
_SHORT_DEADLINE_DIVISOR: Final = 4


@dataclass(frozen=True, slots=True)
class Mutation:
    """The operations to apply (empty: the pod is already as it should be) and the warnings."""

    patch: tuple[PatchOperation, ...]
    warnings: tuple[str, ...]


def escape(token: str) -> str:
    """One JSON Pointer reference token (RFC 6901): ``~`` is ``~0``, ``/`` is ``~1``."""
    return token.replace("~", "~0").replace("/", "~1")


def container_env(reservation: Reservation) -> dict[str, str]:
    """The environment an RT container is given (values are strings, as in a pod)."""
    return names.container_env(reservation.runtime_ns, reservation.deadline_ns, reservation.period_ns, reservation.cpus)


def bandwidth_millicpus(reservation: Reservation) -> int:
    """The reservation's bandwidth over all its CPUs in thousandths of a CPU, rounded up (for quota)."""
    return -(-reservation.bandwidth * reservation.cpus * 1000 // BW_UNIT)


def request_warnings(request: PodRequest) -> list[str]:
    """Things that are valid but probably not what the author meant."""
    warnings = []
    for name in sorted(request.containers):
        r = request.containers[name]
        if r.deadline_ns * _SHORT_DEADLINE_DIVISOR <= r.period_ns:
            on = f" on each of {r.cpus} CPUs" if r.cpus > 1 else ""
            warnings.append(
                f'container "{name}": deadline {format_ns(r.deadline_ns)} is much shorter than period '
                f"{format_ns(r.period_ns)}: it needs {percent(r.density)} of a CPU{on}, not {percent(r.bandwidth)}"
            )
    return warnings


def _tolerates(existing: Any, wanted: Toleration) -> bool:
    """Whether an existing toleration already covers the RT-node taint (core/v1 semantics)."""
    if not isinstance(existing, Mapping):
        return False
    key = existing.get("key") or ""
    operator = existing.get("operator") or "Equal"
    effect = existing.get("effect") or ""
    if effect and effect != wanted.effect:
        return False
    if operator == "Exists":
        return key in ("", wanted.key)
    return key == wanted.key and (existing.get("value") or "") == (wanted.value or "")


def _set_map_entries(ops: list[PatchOperation], path: str, current: Any, desired: Mapping[str, Any]) -> None:
    """Make ``current`` (a JSON object at ``path``, or missing) contain ``desired``'s entries."""
    if not isinstance(current, Mapping):
        ops.append({"op": "add", "path": path, "value": dict(desired)})
        return
    for key, value in desired.items():
        if key not in current:
            ops.append({"op": "add", "path": f"{path}/{escape(key)}", "value": value})
        elif current[key] != value:
            ops.append({"op": "replace", "path": f"{path}/{escape(key)}", "value": value})


def _set_env(ops: list[PatchOperation], path: str, env: Any, desired: Mapping[str, str]) -> None:
    if not isinstance(env, Sequence) or not env:
        ops.append({"op": "add", "path": path, "value": [{"name": k, "value": v} for k, v in desired.items()]})
        return
    for key, value in desired.items():
        wanted = {"name": key, "value": value}
        found = False
        for index, entry in enumerate(env):
            if isinstance(entry, Mapping) and entry.get("name") == key:
                found = True
                if dict(entry) != wanted:  # a different value, or a valueFrom: ours wins
                    ops.append({"op": "replace", "path": f"{path}/{index}", "value": wanted})
        if not found:
            ops.append({"op": "add", "path": f"{path}/-", "value": wanted})


def _set_resources(ops: list[PatchOperation], path: str, resources: Any, desired: Mapping[str, str]) -> None:
    """Extended resources: requests must equal limits (they cannot be overcommitted)."""
    if not desired:
        return
    if not isinstance(resources, Mapping):
        ops.append({"op": "add", "path": path, "value": {"requests": dict(desired), "limits": dict(desired)}})
        return
    for part in ("requests", "limits"):
        _set_map_entries(ops, f"{path}/{part}", resources.get(part), desired)


def has_resource_claims(pod: Mapping[str, Any]) -> bool:
    """Whether the pod uses DRA ResourceClaims (``spec.resourceClaims``)."""
    return bool((pod.get("spec") or {}).get("resourceClaims"))


def scoring_marker(pod: Mapping[str, Any]) -> tuple[tuple[PatchOperation, ...], dict[str, Any]]:
    """DRA mode's scoring: ``rt.resource.example.com/dra: 1`` on the first container (requests = limits).

    Returns the operations and the pod as they leave it, so that further operations are computed
    on top of them (both may touch that container's resources).
    """
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        return (), dict(pod)
    ops: list[PatchOperation] = []
    _set_resources(ops, "/spec/containers/0/resources", containers[0].get("resources"), {dra.SCORING_RESOURCE: "1"})
    if not ops:
        return (), dict(pod)
    first = copy.deepcopy(dict(containers[0]))
    resources = first["resources"] if isinstance(first.get("resources"), dict) else {}
    for part in ("requests", "limits"):
        resources[part] = {**(resources.get(part) or {}), dra.SCORING_RESOURCE: "1"}
    first["resources"] = resources
    spec = {**pod["spec"], "containers": [first, *containers[1:]]}
    return tuple(ops), {**pod, "spec": spec}


def build_patch(pod: Mapping[str, Any], request: PodRequest, config: WebhookConfig) -> Mutation:
    """The operations that make ``pod`` carry ``request`` the way RT-DRA reads it."""
    ops: list[PatchOperation] = []
    warnings: list[str] = []
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    spec: Mapping[str, Any] = pod.get("spec") or {}
    containers: Sequence[Mapping[str, Any]] = spec.get("containers") or []

    desired_annotations: dict[str, str] = {names.SPEC: request.spec_json()}
    current_spec = annotations.get(names.SPEC)
    if current_spec is not None and current_spec != desired_annotations[names.SPEC]:
        warnings.append(f"{names.SPEC} was replaced: only RT-DRA writes it")
    _set_map_entries(ops, "/metadata/annotations", metadata.get("annotations"), desired_annotations)

    for index, container in enumerate(containers):
        reservation = request.containers.get(container["name"])
        if reservation is None:
            continue
        base = f"/spec/containers/{index}"
        _set_env(ops, f"{base}/env", container.get("env"), container_env(reservation))
        extended: dict[str, str] = {}
        if config.extended_resource:
            extended[names.DL_RESOURCE] = "1"
        if config.bandwidth_resource:
            extended[config.bandwidth_resource] = str(bandwidth_millicpus(reservation))
        _set_resources(ops, f"{base}/resources", container.get("resources"), extended)

    if config.scheduler_name:
        current = spec.get("schedulerName")
        if current != config.scheduler_name:
            if current not in (None, "", DEFAULT_SCHEDULER):
                warnings.append(f"schedulerName {current!r} was replaced by {config.scheduler_name!r} (real-time pods)")
            ops.append({"op": "add", "path": "/spec/schedulerName", "value": config.scheduler_name})
    if config.toleration is not None:
        tolerations = spec.get("tolerations")
        if not isinstance(tolerations, Sequence) or not tolerations:
            ops.append({"op": "add", "path": "/spec/tolerations", "value": [config.toleration.to_json()]})
        elif not any(_tolerates(t, config.toleration) for t in tolerations):
            ops.append({"op": "add", "path": "/spec/tolerations/-", "value": config.toleration.to_json()})
    return Mutation(patch=tuple(ops), warnings=tuple(warnings))
