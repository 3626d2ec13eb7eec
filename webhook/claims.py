"""DRA mode: completing ResourceClaims and ResourceClaimTemplates that ask for RT CPUs.

A user writes a claim (or a template's ``spec.spec``) with a request of device
class ``rt.resource.example.com`` and the old driver's ``RtClaimParameters``
as the opaque config of driver ``rt.resource.example.com`` (scoped to that
request by ``requests``, or to all of the claim's requests). The stock
allocator only knows counts and capacities, so for every request of our class
this module writes what it needs - and no user should compute:

- ``allocationMode: ExactCount`` and ``count`` = the parameters' ``count``
  (N distinct CPUs: the allocator never gives one request a device twice; kube-apiserver has
  already defaulted a missing count to 1, so 1 is replaced, any other count must agree);
- ``capacity.requests["rt.resource.example.com/bandwidth"]`` =
  :func:`rtdra.dra.capacity_request` in kernel units (the bandwidth, or the
  density ``runtime/deadline`` when the deadline is shorter than the period).

Denied (422, naming the request): a request of our class without parameters
(the message shows what to add), parameters that break a rule of the
annotations (``rtdra.request``: same rules, same words), more than one
parameters object for a request, a ``count``, ``allocationMode`` or capacity
request that contradicts the parameters, a ``firstAvailable`` list naming our
class (its sub-requests would each need their own parameters; not supported),
a config of our driver naming a request that does not exist or is not of our
class. Requests of other classes are never touched.

Like :mod:`webhook.mutate` it emits an operation only where the object differs
from its desired state, so a completed claim (or a claim made from a completed
template) gets an empty patch. Pure: no I/O, no HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from rtdra import dra
from rtdra.bandwidth import format_ns, percent
from rtdra.request import DEFAULT_LIMITS, InvalidRequest, KernelLimits, Reservation
from webhook.mutate import Mutation, escape
from webhook.reviews import PatchOperation

RESOURCE_GROUP: Final = "resource.k8s.io"
CLAIMS: Final = "resourceclaims"
TEMPLATES: Final = "resourceclaimtemplates"
EXACT_COUNT: Final = "ExactCount"
#: What kube-apiserver's defaulting writes for an ExactCount request without a count (before admission).
DEFAULTED_COUNT: Final = 1


class ClaimDenied(ValueError):
    """A claim (or template) the webhook refuses; the message names the request and the rule."""


@dataclass(frozen=True, slots=True)
class RtRequest:
    """One request of our device class, with the reservation its parameters ask for."""

    index: int
    name: str
    reservation: Reservation

    @property
    def capacity(self) -> int:
        return dra.capacity_request(self.reservation)


def example_config(request: str) -> str:
    """What to add to ``spec.devices.config`` for ``request``, as JSON a user can paste."""
    example = {
        "requests": [request],
        "opaque": {
            "driver": dra.DRIVER,
            "parameters": {
                "apiVersion": dra.PARAMETERS_API_VERSION,
                "kind": dra.PARAMETERS_KIND,
                "spec": {"count": 1, "runtime": 1000, "period": 10000},
            },
        },
    }
    return json.dumps(example, separators=(", ", ": "))


def _requests(devices: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    requests = devices.get("requests") or []
    if not isinstance(requests, list) or not all(isinstance(r, Mapping) for r in requests):
        raise ClaimDenied("spec.devices.requests must be a list of objects")
    return requests


def _configs(devices: Mapping[str, Any]) -> list[tuple[int, Sequence[str], Any]]:
    """Our driver's opaque configs: (index, the requests they are scoped to (empty: all), parameters)."""
    configs = devices.get("config") or []
    if not isinstance(configs, list):
        raise ClaimDenied("spec.devices.config must be a list")
    out: list[tuple[int, Sequence[str], Any]] = []
    for index, config in enumerate(configs):
        opaque = config.get("opaque") if isinstance(config, Mapping) else None
        if not isinstance(opaque, Mapping) or opaque.get("driver") != dra.DRIVER:
            continue
        scope = config.get("requests") or []
        if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
            raise ClaimDenied(f"spec.devices.config[{index}].requests must be a list of request names")
        out.append((index, scope, opaque.get("parameters")))
    return out


def _class_of(request: Mapping[str, Any]) -> str | None:
    exactly = request.get("exactly")
    return str(exactly.get("deviceClassName")) if isinstance(exactly, Mapping) else None


def rt_requests(spec: Mapping[str, Any], limits: KernelLimits = DEFAULT_LIMITS) -> list[RtRequest]:
    """The requests of our class in a ResourceClaimSpec and their reservations; :class:`ClaimDenied` if invalid."""
    devices = spec.get("devices") or {}
    if not isinstance(devices, Mapping):
        raise ClaimDenied("spec.devices must be an object")
    requests = _requests(devices)
    configs = _configs(devices)
    by_name = {str(r.get("name")): r for r in requests}
    ours = [(i, str(r.get("name"))) for i, r in enumerate(requests) if _class_of(r) == dra.DEVICE_CLASS]
    for r in requests:
        for sub in r.get("firstAvailable") or []:
            if isinstance(sub, Mapping) and sub.get("deviceClassName") == dra.DEVICE_CLASS:
                raise ClaimDenied(
                    f'request "{r.get("name")}": firstAvailable cannot name device class {dra.DEVICE_CLASS} '
                    "(write a request with exactly: and RtClaimParameters instead)"
                )
    problems: list[str] = []
    for index, scope, _ in configs:
        for name in scope:
            if name not in by_name:
                problems.append(f"spec.devices.config[{index}] names request {name!r}, which this claim does not have")
            elif _class_of(by_name[name]) != dra.DEVICE_CLASS:
                problems.append(
                    f"spec.devices.config[{index}] gives RtClaimParameters to request {name!r}, "
                    f"which is not of device class {dra.DEVICE_CLASS}"
                )
    if configs and not ours:
        problems.append(
            f"spec.devices.config has {dra.DRIVER} parameters but no request of device class {dra.DEVICE_CLASS}"
        )
    found: list[RtRequest] = []
    for index, name in ours:
        applying = [(i, params) for i, scope, params in configs if not scope or name in scope]
        if not applying:
            problems.append(
                f'request "{name}" of device class {dra.DEVICE_CLASS} has no RtClaimParameters; add to '
                f"spec.devices.config: {example_config(name)} (runtime and period in microseconds)"
            )
            continue
        if len(applying) > 1:
            where = ", ".join(f"spec.devices.config[{i}]" for i, _ in applying)
            problems.append(f'request "{name}" has more than one RtClaimParameters ({where}); keep one')
            continue
        try:
            reservation = dra.parameters_reservation(name, applying[0][1], limits)
        except InvalidRequest as err:
            problems.append(f"invalid real-time request: {dra.describe(err.problems)}")
            continue
        if reservation.cpus > dra.MAX_DEVICES_PER_CLAIM:
            problems.append(
                f'request "{name}", count: must be at most {dra.MAX_DEVICES_PER_CLAIM} '
                f"(Kubernetes allocates at most {dra.MAX_DEVICES_PER_CLAIM} devices to a claim), "
                f"got {reservation.cpus}"
            )
            continue
        found.append(RtRequest(index, name, reservation))
    if problems:
        raise ClaimDenied("; ".join(problems))
    return found


def _check_explicit(request: Mapping[str, Any], rt: RtRequest) -> list[str]:
    """What the user wrote that contradicts the parameters (empty: nothing, or the same values)."""
    exactly: Mapping[str, Any] = request.get("exactly") or {}
    problems = []
    mode = exactly.get("allocationMode")
    if mode not in (None, "", EXACT_COUNT):
        problems.append(
            f'request "{rt.name}": allocationMode {mode} contradicts RtClaimParameters '
            f"(count {rt.reservation.cpus} distinct CPUs: ExactCount); remove allocationMode"
        )
    count = exactly.get("count")
    # kube-apiserver defaults count to 1 before admission: 1 may be the user's or the default's, so it is
    # overwritten; any other value is the user's and must agree.
    if count not in (None, DEFAULTED_COUNT, rt.reservation.cpus):
        problems.append(
            f'request "{rt.name}": count {count} contradicts RtClaimParameters count {rt.reservation.cpus}; '
            "remove count (the webhook writes it)"
        )
    capacity = exactly.get("capacity")
    requested = capacity.get("requests") if isinstance(capacity, Mapping) else None
    if isinstance(requested, Mapping):
        for key, value in requested.items():
            if key != dra.CAPACITY:
                problems.append(
                    f'request "{rt.name}": capacity {key} is not a capacity of {dra.DRIVER} devices '
                    f"(they have {dra.CAPACITY} only)"
                )
                continue
            try:
                given = dra.parse_quantity(value)
            except ValueError as err:
                problems.append(f'request "{rt.name}": capacity {key}: {err}')
                continue
            if given != rt.capacity:
                problems.append(
                    f'request "{rt.name}": capacity {key} {value} contradicts RtClaimParameters '
                    f"({rt.reservation}: {rt.capacity} = {percent(rt.capacity)} of a CPU); remove it "
                    "(the webhook writes it)"
                )
    return problems


def build_claim_patch(spec: Mapping[str, Any], base: str, limits: KernelLimits = DEFAULT_LIMITS) -> Mutation:
    """The operations that complete the ResourceClaimSpec at JSON pointer ``base`` (``/spec`` or ``/spec/spec``)."""
    found = rt_requests(spec, limits)
    if not found:
        return Mutation((), ())
    requests = (spec.get("devices") or {}).get("requests") or []
    problems = [p for rt in found for p in _check_explicit(requests[rt.index], rt)]
    if problems:
        raise ClaimDenied("; ".join(problems))
    ops: list[PatchOperation] = []
    warnings: list[str] = []
    for rt in found:
        exactly: Mapping[str, Any] = requests[rt.index].get("exactly") or {}
        path = f"{base}/devices/requests/{rt.index}/exactly"
        if exactly.get("allocationMode") != EXACT_COUNT:
            ops.append({"op": "add", "path": f"{path}/allocationMode", "value": EXACT_COUNT})
        if exactly.get("count") != rt.reservation.cpus:
            ops.append({"op": "add", "path": f"{path}/count", "value": rt.reservation.cpus})
        capacity = exactly.get("capacity")
        wanted = str(rt.capacity)
        if not isinstance(capacity, Mapping):
            ops.append({"op": "add", "path": f"{path}/capacity", "value": {"requests": {dra.CAPACITY: wanted}}})
        elif not isinstance(capacity.get("requests"), Mapping):
            ops.append({"op": "add", "path": f"{path}/capacity/requests", "value": {dra.CAPACITY: wanted}})
        elif dra.CAPACITY not in capacity["requests"]:
            ops.append({"op": "add", "path": f"{path}/capacity/requests/{escape(dra.CAPACITY)}", "value": wanted})
        r = rt.reservation
        if r.constrained:
            warnings.append(
                f'request "{rt.name}": deadline {format_ns(r.deadline_ns)} < period {format_ns(r.period_ns)}: '
                f"each CPU is booked at the density runtime/deadline, {percent(r.density)} rather than "
                f"{percent(r.bandwidth)} (DRA's sum of capacities can only express this sufficient EDF test)"
            )
    return Mutation(tuple(ops), tuple(warnings))


def claim_spec_of(obj: Any, resource: str) -> tuple[Mapping[str, Any], str]:
    """The ResourceClaimSpec inside a claim (``/spec``) or a template (``/spec/spec``), and its pointer."""
    if not isinstance(obj, Mapping):
        raise ClaimDenied(f"request.object must be a {'ResourceClaim' if resource == CLAIMS else 'template'}")
    spec = obj.get("spec")
    base = "/spec"
    if resource == TEMPLATES:
        spec = spec.get("spec") if isinstance(spec, Mapping) else None
        base = "/spec/spec"
    if not isinstance(spec, Mapping):
        raise ClaimDenied(f"{base[1:].replace('/', '.')} must be an object")
    return spec, base
