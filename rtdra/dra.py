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

import re
from collections.abc import Mapping
from dataclasses import replace
from decimal import ROUND_CEILING, Decimal, InvalidOperation
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
# Quantities (capacity values, requests and consumed capacities are resource.Quantity)
# ---------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|([a-zA-Z]{0,2}))$")
_SUFFIXES: Final[Mapping[str, Decimal]] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024**i) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}


def parse_quantity(value: Any) -> Decimal:
    """A ``resource.Quantity`` (``"1048576"``, ``"1Mi"``, ``"1.5k"``, ``"1e6"``, or a JSON number) as a Decimal."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Decimal(value)
    match = _QUANTITY.match(str(value).strip()) if isinstance(value, str | float) else None
    if match is None or (match[3] is not None and match[3] not in _SUFFIXES):
        raise ValueError(f"{value!r} is not a quantity (write e.g. 1048576 or 1Mi)")
    try:
        number = Decimal(match[1])
        if match[2]:
            return number.scaleb(int(match[2][1:]))
        return number * _SUFFIXES[match[3] or ""]
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a quantity") from None


def bandwidth_quantity(value: Any) -> int:
    """A bandwidth quantity in whole kernel units, rounded up as kube-apiserver rounds a Quantity."""
    return int(parse_quantity(value).to_integral_value(rounding=ROUND_CEILING))
