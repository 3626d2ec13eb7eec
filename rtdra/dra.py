"""The DRA-mode contract (resource.k8s.io/v1 with consumable capacity).

In DRA mode a node's RT CPUs are devices of one ResourceSlice pool that the node
agent publishes, and the stock kube-scheduler's DRA allocator books bandwidth on
them: each device allows multiple allocations and has one capacity, its CPU's
deadline bandwidth in the kernel's fixed point (``rtdra.bandwidth``), so
"Σ consumed ≤ capacity per device" is exactly the per-CPU admission test the
extender runs in extender mode. This module names that contract once, for the
webhook (which writes claims' capacity requests), the agent (which publishes the
slices and prepares claims) and the extender (which may score DRA pods).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Final

from rtdra.bandwidth import NSEC_PER_USEC, TIME_MAX_NS
from rtdra.names import DOMAIN
from rtdra.request import (
    DEFAULT_LIMITS,
    InvalidRequest,
    KernelLimits,
    Problem,
    Reservation,
    reservation_from_claim_parameters,
    validate_reservation,
)

#: The DRA driver name, the DeviceClass name and the capacity's domain.
DRIVER: Final = DOMAIN
DEVICE_CLASS: Final = DOMAIN
#: The consumable capacity of each CPU device, in kernel bandwidth units (1 CPU = 1 << 20).
CAPACITY: Final = f"{DOMAIN}/bandwidth"
#: Device attributes a claim can select on (CEL: ``device.attributes["rt.resource.example.com"].cpu``).
ATTRIBUTE_CPU: Final = "cpu"
ATTRIBUTE_CORE: Final = "core"
#: The standard attribute name for a device's NUMA node (upstream ``resource.kubernetes.io``).
ATTRIBUTE_NUMA: Final = "resource.kubernetes.io/numaNode"
#: The opaque driver config's parameters, as the old driver's users wrote them.
PARAMETERS_API_VERSION: Final = f"{DOMAIN}/v1alpha1"
PARAMETERS_KIND: Final = "RtClaimParameters"
#: The extended resource the webhook adds (optionally) to pods with ResourceClaims, so that the scheduler
#: extender entry that scores DRA pods can name it in ``managedResources`` (``ignoredByScheduler``) and
#: kube-scheduler calls it for those pods only, never for plain ones. No node advertises it; kubelet
#: drops extended resources its node does not have before its fit check.
SCORING_RESOURCE: Final = f"{DOMAIN}/dra"
#: Upstream's limit on the devices allocated to one claim (``resource.k8s.io/v1`` AllocationResultsMaxSize).
MAX_DEVICES_PER_CLAIM: Final = 32


def device_name(cpu: int) -> str:
    """The device that stands for one CPU (DNS label)."""
    return f"cpu-{cpu}"


def cpu_of_device(name: str) -> int:
    """The CPU a device name stands for; ``ValueError`` for a name that is not ours."""
    prefix, _, number = name.partition("-")
    if prefix != "cpu" or not number.isdigit():
        raise ValueError(f"{name!r} is not an RT-DRA CPU device (expected cpu-<n>)")
    return int(number)


def capacity_request(r: Reservation) -> int:
    """What one claim consumes on each CPU it is given: the kernel-exact bandwidth, or the
    density runtime/deadline when the deadline is shorter than the period (the sufficient
    per-CPU EDF test that a sum of capacities can express)."""
    return r.density if r.constrained else r.bandwidth


def describe(problems: Iterable[Problem]) -> str:
    """Problems as a claim author reads them: ``request "rt", runtime: must be ...``."""
    out = []
    for p in problems:
        where = [f'request "{p.container}"'] if p.container is not None else []
        if p.field:
            where.append(p.field)
        out.append(f"{', '.join(where)}: {p.message}" if where else p.message)
    return "; ".join(out)


def parameters_reservation(request: str, parameters: Any, limits: KernelLimits = DEFAULT_LIMITS) -> Reservation:
    """The reservation an opaque driver config's ``parameters`` ask for, for the claim request ``request``.

    ``parameters`` is the old driver's object, ``{apiVersion: rt.resource.example.com/v1alpha1,
    kind: RtClaimParameters, spec: {count, runtime, period[, deadline]}}`` (µs, the CRD's defaults
    1/10/100). ``deadline`` is the one addition: the CRD has none, a claim may say it (absent: the
    period). Every rule is the annotations' (``rtdra.request``); problems name ``request`` where
    an annotation's problems name the container.
    """
    if not isinstance(parameters, Mapping):
        raise InvalidRequest([Problem(request, "parameters", "must be an object (an RtClaimParameters)")])
    problems: list[Problem] = []
    if parameters.get("apiVersion") != PARAMETERS_API_VERSION or parameters.get("kind") != PARAMETERS_KIND:
        problems.append(
            Problem(
                request,
                "parameters",
                f"must be apiVersion {PARAMETERS_API_VERSION}, kind {PARAMETERS_KIND}; got apiVersion "
                f"{parameters.get('apiVersion')!r}, kind {parameters.get('kind')!r}",
            )
        )
    unknown = sorted(str(k) for k in parameters if k not in ("apiVersion", "kind", "metadata", "spec"))
    if unknown:
        problems.append(Problem(request, "parameters", f"has unknown fields {', '.join(unknown)} (only spec)"))
    spec = parameters.get("spec")
    if spec is not None and not isinstance(spec, Mapping):
        problems.append(Problem(request, "spec", "must be an object"))
        spec = None
    body = dict(spec or {})
    deadline_us = body.pop("deadline", None)
    if deadline_us is not None and (
        isinstance(deadline_us, bool)
        or not isinstance(deadline_us, int)
        or not 1 <= deadline_us <= TIME_MAX_NS // NSEC_PER_USEC
    ):
        problems.append(Problem(request, "deadline", f"must be a whole number of microseconds, got {deadline_us!r}"))
        deadline_us = None
    try:
        reservation = reservation_from_claim_parameters(request, body, limits)
    except InvalidRequest as err:
        raise InvalidRequest([*problems, *err.problems]) from None
    if problems:
        raise InvalidRequest(problems)
    if deadline_us is None:
        return reservation
    reservation = replace(reservation, deadline_ns=deadline_us * NSEC_PER_USEC)
    found = validate_reservation(request, reservation, limits)
    if found:
        raise InvalidRequest(found)
    return reservation


# ---------------------------------------------------------------------------
# The node's ResourceSlices (resource.k8s.io/v1), built from what the agent measured
# ---------------------------------------------------------------------------

#: The API group/version of ResourceSlices and ResourceClaims the agent speaks.
RESOURCE_API: Final = "resource.k8s.io/v1"
#: Upstream's limit on devices in one slice (``ResourceSliceMaxDevices``; 64 with taints or counters,
#: which ours have not): a bigger node's pool spans several slices.
MAX_DEVICES_PER_SLICE: Final = 128


@dataclass(frozen=True, slots=True)
class CpuDevice:
    """One CPU as a device: its capacity (kernel fixed point) and where it sits."""

    cpu: int
    capacity: int
    #: ``/sys/devices/system/cpu/cpu<n>/topology/core_id`` (None: unknown).
    core: int | None = None
    #: The NUMA node it belongs to (None: unknown, and then not published, as upstream asks).
    numa: int | None = None


def slice_device(d: CpuDevice) -> dict[str, Any]:
    """The ResourceSlice ``devices[]`` entry for one CPU: shareable, with its bandwidth as capacity."""
    attributes: dict[str, Any] = {ATTRIBUTE_CPU: {"int": d.cpu}}
    if d.core is not None:
        attributes[ATTRIBUTE_CORE] = {"int": d.core}
    if d.numa is not None:
        attributes[ATTRIBUTE_NUMA] = {"int": d.numa}
    return {
        "name": device_name(d.cpu),
        "allowMultipleAllocations": True,
        "attributes": attributes,
        "capacity": {CAPACITY: {"value": str(d.capacity)}},
    }


def slice_name(node: str, index: int) -> str:
    """The name of the ``index``-th slice of ``node``'s pool (a DNS subdomain: the node's name is one)."""
    return f"{node}-{DRIVER}-{index}"


def resource_slices(
    node: str, generation: int, devices: Sequence[CpuDevice], owner: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The ResourceSlices of ``node``'s pool at ``generation``: its devices, at most 128 a slice.

    ``owner`` (the Node's ``{name, uid}``) makes the Node their owner, so the garbage collector
    deletes them when the node goes. A node without RT CPUs still publishes one (empty) slice,
    so that the pool says "nothing here" rather than "unknown".
    """
    ordered = sorted(devices, key=lambda d: d.cpu)
    chunks = [ordered[i : i + MAX_DEVICES_PER_SLICE] for i in range(0, len(ordered), MAX_DEVICES_PER_SLICE)] or [[]]
    out = []
    for index, chunk in enumerate(chunks):
        metadata: dict[str, Any] = {"name": slice_name(node, index)}
        if owner is not None:
            metadata["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": owner["name"], "uid": owner["uid"], "controller": True}
            ]
        out.append(
            {
                "apiVersion": RESOURCE_API,
                "kind": "ResourceSlice",
                "metadata": metadata,
                "spec": {
                    "driver": DRIVER,
                    "nodeName": node,
                    "pool": {"name": node, "generation": generation, "resourceSliceCount": len(chunks)},
                    "devices": [slice_device(d) for d in chunk],
                },
            }
        )
    return out


def same_pool_content(published: Sequence[Mapping[str, Any]], wanted: Sequence[Mapping[str, Any]]) -> bool:
    """Whether published slices already say what ``wanted`` says (ignoring generation and server fields)."""

    def device(d: Mapping[str, Any]) -> dict[str, Any]:
        # The API writes quantities in canonical form: "1048576" comes back as "1Mi".
        capacity = {k: parse_quantity((v or {}).get("value", 0)) for k, v in (d.get("capacity") or {}).items()}
        return {**d, "capacity": capacity}

    def content(slices: Sequence[Mapping[str, Any]]) -> list[Any]:
        out = []
        for s in sorted(slices, key=lambda s: str((s.get("metadata") or {}).get("name", ""))):
            spec = dict(s.get("spec") or {})
            pool = dict(spec.pop("pool", None) or {})
            pool.pop("generation", None)
            devices = [device(d) for d in spec.get("devices") or []]
            out.append((s["metadata"]["name"], pool, spec.get("nodeName"), spec.get("driver"), devices))
        return out

    return content(published) == content(wanted)


# ---------------------------------------------------------------------------
# Quantities (what the API writes in capacity and consumedCapacity)
# ---------------------------------------------------------------------------

_BINARY: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL: Final = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1)} | {
    s: Fraction(10**e) for s, e in (("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15), ("E", 18))
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")


def parse_quantity(value: Any) -> int:
    """A Kubernetes quantity (``"1Mi"``, ``"52429"``, ``"1e3"``) as an integer, rounded up as the API does."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    m = _QUANTITY.match(text)
    if m is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, exponent, suffix = Fraction(m.group(1)), m.group(2), m.group(3) or ""
    if exponent:
        number *= Fraction(10) ** int(exponent[1:])
    else:
        number *= _BINARY.get(suffix) or _DECIMAL[suffix]
    return math.ceil(number)


# ---------------------------------------------------------------------------
# Claims: what the allocator gave our driver, and the parameters that go with it
# ---------------------------------------------------------------------------


class ClaimError(ValueError):
    """A claim the node cannot prepare; the message says why, in words for ``kubectl describe``."""


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    """One allocation result for our driver: a CPU and the bandwidth booked on it for this claim."""

    request: str
    pool: str
    device: str
    cpu: int
    consumed: int
    share_id: str = ""


def allocated_devices(claim: Mapping[str, Any], pool: str) -> list[AllocatedDevice]:
    """The results of ``claim``'s allocation that are ours (driver and ``pool``); :class:`ClaimError` if any is odd.

    A result without ``consumedCapacity`` (a device not shareable when it was allocated) consumed
    the whole device, as the allocator counts it.
    """
    allocation = (claim.get("status") or {}).get("allocation")
    if not allocation:
        raise ClaimError("the claim is not allocated")
    out = []
    for result in (allocation.get("devices") or {}).get("results") or []:
        if result.get("driver") != DRIVER:
            continue
        if result.get("pool") != pool:
            raise ClaimError(f"device {result.get('device')} of pool {result.get('pool')!r} is not on node {pool}")
        try:
            cpu = cpu_of_device(str(result.get("device", "")))
            consumed_text = (result.get("consumedCapacity") or {}).get(CAPACITY)
            consumed = parse_quantity(consumed_text) if consumed_text is not None else -1
        except ValueError as err:
            raise ClaimError(str(err)) from None
        out.append(
            AllocatedDevice(
                str(result.get("request", "")),
                str(result["pool"]),
                str(result["device"]),
                cpu,
                consumed,
                str(result.get("shareID") or ""),
            )
        )
    return out


def request_parameters(claim: Mapping[str, Any], request: str) -> Mapping[str, Any] | None:
    """Our driver's opaque parameters that apply to ``request``, from the allocation (class and claim config).

    Upstream's order: class config first, then the claim's; a later entry overrides an earlier one.
    A subrequest (``req/sub``) is matched by its parent's name too. ``None``: no config.
    """
    allocation = (claim.get("status") or {}).get("allocation") or {}
    configs = (allocation.get("devices") or {}).get("config") or []
    ordered = sorted(configs, key=lambda c: 0 if c.get("source") == "FromClass" else 1)
    found: Mapping[str, Any] | None = None
    parent = request.split("/", 1)[0]
    for config in ordered:
        opaque = config.get("opaque") or {}
        if opaque.get("driver") != DRIVER:
            continue
        scope = config.get("requests") or []
        if scope and request not in scope and parent not in scope:
            continue
        found = opaque.get("parameters") or {}
    return found


def reservation_from_parameters(parameters: Mapping[str, Any] | None, where: str) -> Reservation:
    """The reservation a prepared claim's opaque ``RtClaimParameters`` ask for (:func:`parameters_reservation`'s
    rules and words), as a :class:`ClaimError`; no parameters: the seed driver's defaults (10 µs every 100 µs)."""
    if not parameters:
        return reservation_from_claim_parameters(where, {})
    try:
        return parameters_reservation(where, parameters)
    except InvalidRequest as err:
        raise ClaimError(describe(err.problems)) from None
