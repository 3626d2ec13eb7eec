"""The real-time request: what a pod asks for, parsed, validated and normalised.

A pod asks for SCHED_DEADLINE reservations through annotations::

    rt.resource.example.com/container.<name>: runtime=2ms,period=10ms[,deadline=5ms][,cpus=2]
    rt.resource.example.com/claim-parameters.<name>: <RtClaimParameters object name>
    rt.resource.example.com/placement: pack | spread

Durations take ``ns``, ``us``, ``ms`` or ``s``; a bare integer is
microseconds (the seed driver's unit). The canonical form is a
:class:`Reservation` per container in integer nanoseconds; its JSON is the
``rt.resource.example.com/spec`` annotation the webhook writes and the
extender and agent read. Every error is a :class:`Problem` that names the
container, the field and the rule, in words a pod author can act on.

This module does no I/O: resolving an ``RtClaimParameters`` name is the
caller's job, passed in as a lookup function.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, cast

import marshmallow
from marshmallow import fields, validate

from rtdra import names
from rtdra.bandwidth import (
    NSEC_PER_MSEC,
    NSEC_PER_SEC,
    NSEC_PER_USEC,
    PERIOD_MAX_US_DEFAULT,
    PERIOD_MIN_US_DEFAULT,
    RUNTIME_MIN_NS,
    TIME_MAX_NS,
    bandwidth,
    format_ns,
    to_ratio,
)

Placement = Literal["pack", "spread"]
PLACEMENTS: Final[tuple[Placement, ...]] = ("pack", "spread")
DEFAULT_PLACEMENT: Final[Placement] = "pack"

#: More distinct CPUs than this is a typo, not a request.
CPUS_MAX: Final = 4096
#: Longest number we read; 2**63 ns has 19 digits.
_MAX_DIGITS: Final = 20

_UNITS: Final = {"ns": 1, "us": NSEC_PER_USEC, "µs": NSEC_PER_USEC, "ms": NSEC_PER_MSEC, "s": NSEC_PER_SEC}
_NUMBER = re.compile(r"^\s*([+-]?)(\d*)(?:\.(\d*))?\s*([a-zµ]*)\s*$", re.IGNORECASE)
#: Container names are DNS labels (RFC 1123).
_CONTAINER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_KEYS: Final = ("runtime", "period", "deadline", "cpus")


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a request is invalid."""

    container: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = [f'container "{self.container}"'] if self.container is not None else []
        if self.field:
            where.append(self.field)
        return f"{', '.join(where)}: {self.message}" if where else self.message


class InvalidRequest(ValueError):
    """A request that breaks one or more rules; ``problems`` says which."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class KernelLimits:
    """The node kernel's parameter limits (``kernel.sched_deadline_period_*_us``)."""

    period_min_ns: int = PERIOD_MIN_US_DEFAULT * NSEC_PER_USEC
    period_max_ns: int = PERIOD_MAX_US_DEFAULT * NSEC_PER_USEC


DEFAULT_LIMITS: Final = KernelLimits()


@dataclass(frozen=True, slots=True)
class Reservation:
    """Runtime every period before the deadline, on each of ``cpus`` distinct CPUs."""

    runtime_ns: int
    deadline_ns: int
    period_ns: int
    cpus: int = 1

    @property
    def bandwidth(self) -> int:
        """Per-CPU bandwidth as the kernel admits it (fixed point, see ``rtdra.bandwidth``)."""
        return bandwidth(self.runtime_ns, self.period_ns)

    @property
    def density(self) -> int:
        """``runtime/deadline``: the share EDF needs when the deadline is shorter than the period."""
        return to_ratio(self.deadline_ns, self.runtime_ns)

    @property
    def constrained(self) -> bool:
        return self.deadline_ns < self.period_ns

    def to_json(self) -> dict[str, int]:
        """The spec annotation's shape of one container (ns): ``runtime``, ``deadline``, ``period``, ``cpus``."""
        return {
            "runtime": self.runtime_ns,
            "deadline": self.deadline_ns,
            "period": self.period_ns,
            "cpus": self.cpus,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Reservation:
        """:meth:`to_json`'s shape back (a record this project wrote; user input goes through the parsers)."""
        return cls(int(obj["runtime"]), int(obj["deadline"]), int(obj["period"]), int(obj["cpus"]))

    def __str__(self) -> str:
        text = f"runtime={format_ns(self.runtime_ns)},period={format_ns(self.period_ns)}"
        if self.constrained:
            text += f",deadline={format_ns(self.deadline_ns)}"
        return text + f",cpus={self.cpus}"


@dataclass(frozen=True, slots=True)
class PodRequest:
    """The reservations of one pod, by container name, and its placement policy."""

    containers: Mapping[str, Reservation] = field(default_factory=dict)
    placement: Placement = DEFAULT_PLACEMENT

    def spec_json(self) -> str:
        """The canonical ``rt.resource.example.com/spec`` annotation value."""
        body = {name: self.containers[name].to_json() for name in sorted(self.containers)}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_spec_json(
        cls,
        text: str,
        placement: Placement = DEFAULT_PLACEMENT,
        limits: KernelLimits = DEFAULT_LIMITS,
    ) -> PodRequest:
        """Read a spec annotation back, re-checking every rule (it may be forged)."""
        return cls(containers=_spec_containers(text, limits), placement=placement)


@functools.lru_cache(maxsize=256)  # the extender reads the same few annotations pod after pod, twice each
def _spec_containers(text: str, limits: KernelLimits) -> Mapping[str, Reservation]:
    """:meth:`PodRequest.from_spec_json`'s reservations (read-only: one value may serve many calls)."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InvalidRequest([Problem(None, names.SPEC, f"is not valid JSON ({err})")]) from None
    try:
        loaded = cast(dict[str, dict[str, int]], _SpecSchema().load({"containers": raw})["containers"])
    except marshmallow.ValidationError as err:
        raise InvalidRequest(_schema_problems(err.messages, names.SPEC)) from None
    containers: dict[str, Reservation] = {}
    problems: list[Problem] = []
    for name, values in loaded.items():
        problems += _check_container_name(name)
        reservation = Reservation(
            runtime_ns=values["runtime"],
            deadline_ns=values["deadline"],
            period_ns=values["period"],
            cpus=values["cpus"],
        )
        problems += validate_reservation(name, reservation, limits)
        containers[name] = reservation
    if problems:
        raise InvalidRequest(problems)
    return MappingProxyType(containers)


# ---------------------------------------------------------------------------
# Durations and the container annotation
# ---------------------------------------------------------------------------


def parse_duration(text: str, *, bare_unit_ns: int = NSEC_PER_USEC) -> int:
    """A duration in integer nanoseconds; ``ValueError`` says what is wrong."""
    match = _NUMBER.match(text)
    if not text.strip():
        raise ValueError("has no value")
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a duration (write e.g. 500us, 2ms or 1s)")
    sign, whole, fraction, unit = match.groups()
    if not whole and not fraction:
        raise ValueError(f"{text.strip()!r} is not a duration (write e.g. 500us, 2ms or 1s)")
    if sign == "-":
        raise ValueError(f"must not be negative, got {text.strip()}")
    if unit and unit.lower() not in _UNITS and unit not in _UNITS:
        raise ValueError(f"has unknown unit {unit!r} (use ns, us, ms or s)")
    if fraction is not None:
        raise ValueError(
            f"must be a whole number, got {text.strip()} (use a smaller unit, e.g. 1500us rather than 1.5ms)"
        )
    if len(whole.lstrip("0")) > _MAX_DIGITS:
        raise ValueError(f"is too large (at most {TIME_MAX_NS}ns)")
    scale = _UNITS.get(unit, _UNITS.get(unit.lower(), 0)) if unit else bare_unit_ns
    value = int(whole) * scale
    if value > TIME_MAX_NS:
        raise ValueError(f"is too large (at most {TIME_MAX_NS}ns)")
    return value


def parse_count(text: str) -> int:
    """A CPU count: a whole number from 1 to :data:`CPUS_MAX`."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("has no value")
    if stripped.startswith("-"):
        raise ValueError(f"must be at least 1, got {stripped}")
    if not stripped.lstrip("+").isdigit():
        raise ValueError(f"must be a whole number of CPUs, got {stripped!r}")
    if len(stripped.lstrip("+").lstrip("0")) > _MAX_DIGITS:
        raise ValueError(f"must be at most {CPUS_MAX}")
    value = int(stripped)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    if value > CPUS_MAX:
        raise ValueError(f"must be at most {CPUS_MAX}, got {value}")
    return value


def parse_container_value(container: str, value: str, limits: KernelLimits = DEFAULT_LIMITS) -> Reservation:
    """Parse ``runtime=<dur>,period=<dur>[,deadline=<dur>][,cpus=<n>]``."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    if not value.strip():
        raise InvalidRequest([Problem(container, None, "the request is empty (write e.g. runtime=1ms,period=10ms)")])
    for item in value.split(","):
        if not item.strip():
            problems.append(Problem(container, None, f"empty item in {value!r} (remove the extra comma)"))
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            problems.append(Problem(container, None, f"{item.strip()!r} is not of the form key=value"))
        elif key not in _KEYS:
            problems.append(Problem(container, None, f"{key!r} is not a known key (use {', '.join(_KEYS)})"))
        elif key in seen:
            problems.append(Problem(container, key, "is given more than once"))
        else:
            seen[key] = text
    parsed: dict[str, int] = {}
    for key, text in seen.items():
        try:
            parsed[key] = parse_count(text) if key == "cpus" else parse_duration(text)
        except ValueError as err:
            problems.append(Problem(container, key, str(err)))
    for key in ("runtime", "period"):
        if key not in seen and not any(p.field is None for p in problems):
            problems.append(Problem(container, key, "is required"))
    if problems:
        raise InvalidRequest(problems)
    reservation = Reservation(
        runtime_ns=parsed["runtime"],
        deadline_ns=parsed.get("deadline", parsed["period"]),
        period_ns=parsed["period"],
        cpus=parsed.get("cpus", 1),
    )
    problems = validate_reservation(container, reservation, limits)
    if problems:
        raise InvalidRequest(problems)
    return reservation


def validate_reservation(container: str | None, r: Reservation, limits: KernelLimits = DEFAULT_LIMITS) -> list[Problem]:
    """The kernel's rules (``__checkparam_dl``) and ours, as problems (empty if valid)."""
    problems: list[Problem] = []
    if r.runtime_ns < RUNTIME_MIN_NS:
        problems.append(
            Problem(
                container,
                "runtime",
                f"must be at least {RUNTIME_MIN_NS}ns (the kernel's minimum), got {r.runtime_ns}ns",
            )
        )
    if not limits.period_min_ns <= r.period_ns <= limits.period_max_ns:
        problems.append(
            Problem(
                container,
                "period",
                f"must be between {format_ns(limits.period_min_ns)} and {format_ns(limits.period_max_ns)} "
                f"(the kernel's sched_deadline_period_min_us/max_us), got {format_ns(r.period_ns)}",
            )
        )
    if r.deadline_ns > r.period_ns:
        problems.append(
            Problem(
                container,
                "deadline",
                f"must not exceed the period, got deadline {format_ns(r.deadline_ns)}"
                f" > period {format_ns(r.period_ns)}",
            )
        )
    if r.runtime_ns > r.deadline_ns:
        what = "deadline" if r.deadline_ns < r.period_ns else "period"
        problems.append(
            Problem(
                container,
                "runtime",
                f"must not exceed the {what}, got runtime {format_ns(r.runtime_ns)}"
                f" > {what} {format_ns(r.deadline_ns)}",
            )
        )
    if not 1 <= r.cpus <= CPUS_MAX:
        problems.append(Problem(container, "cpus", f"must be between 1 and {CPUS_MAX}, got {r.cpus}"))
    return problems


# ---------------------------------------------------------------------------
# Structured forms (marshmallow): RtClaimParameters and the spec annotation
# ---------------------------------------------------------------------------


class RtClaimParametersSpec(marshmallow.Schema):
    """The seed driver's ``RtClaimParameters.spec``: count, runtime and period in µs."""

    class Meta:
        unknown = marshmallow.RAISE

    count = fields.Integer(strict=True, load_default=1, validate=validate.Range(min=1, max=CPUS_MAX))
    runtime = fields.Integer(strict=True, load_default=10, validate=validate.Range(min=0, max=TIME_MAX_NS // 1000))
    period = fields.Integer(strict=True, load_default=100, validate=validate.Range(min=1, max=TIME_MAX_NS // 1000))


class _ReservationSchema(marshmallow.Schema):
    class Meta:
        unknown = marshmallow.RAISE

    runtime = fields.Integer(strict=True, required=True, validate=validate.Range(min=0, max=TIME_MAX_NS))
    deadline = fields.Integer(strict=True, required=True, validate=validate.Range(min=0, max=TIME_MAX_NS))
    period = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=TIME_MAX_NS))
    cpus = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=CPUS_MAX))


class _SpecSchema(marshmallow.Schema):
    containers = fields.Dict(keys=fields.String(), values=fields.Nested(_ReservationSchema), required=True)


_SCHEMA_WORDS: Final = {
    "Unknown field.": "is not a known field",
    "Not a valid integer.": "must be a whole number",
    "Missing data for required field.": "is required",
    "Invalid input type.": "has the wrong type",
    "Not a valid mapping type.": "must be an object",
}


def _schema_problems(messages: Any, container: str | None, path: tuple[str, ...] = ()) -> list[Problem]:
    """Flatten marshmallow's nested error messages into problems a pod author can read."""
    if isinstance(messages, Mapping):
        out: list[Problem] = []
        for key, sub in messages.items():
            if key in ("containers", "value", "key", "_schema"):
                out += _schema_problems(sub, container, path)
            elif container == names.SPEC and not path:
                out += _schema_problems(sub, str(key), ("",))
            else:
                out += _schema_problems(sub, container, (*path, str(key)))
        return out
    words = [_SCHEMA_WORDS.get(str(m), str(m)) for m in (messages if isinstance(messages, list) else [messages])]
    text = "; ".join(w[0].lower() + w[1:] if w else w for w in words)
    named = [p for p in path if p]
    if container == names.SPEC:
        return [Problem(None, names.SPEC, text)]
    return [Problem(container, ".".join(named) or None, text)]


def reservation_from_claim_parameters(container: str, spec: Any, limits: KernelLimits = DEFAULT_LIMITS) -> Reservation:
    """Convert an ``RtClaimParameters`` spec (µs, implicit deadline) to a reservation."""
    try:
        loaded = cast(dict[str, int], RtClaimParametersSpec().load(spec if spec is not None else {}))
    except marshmallow.ValidationError as err:
        raise InvalidRequest(_schema_problems(err.messages, container)) from None
    reservation = Reservation(
        runtime_ns=loaded["runtime"] * NSEC_PER_USEC,
        deadline_ns=loaded["period"] * NSEC_PER_USEC,
        period_ns=loaded["period"] * NSEC_PER_USEC,
        cpus=loaded["count"],
    )
    problems = validate_reservation(container, reservation, limits)
    if problems:
        raise InvalidRequest(problems)
    return reservation


# ---------------------------------------------------------------------------
# Pods
# ---------------------------------------------------------------------------

#: ``(namespace, name) -> RtClaimParameters spec``, or ``None`` when there is no such object.
ClaimParametersLookup = Callable[[str, str], Mapping[str, Any] | None]


def is_request_annotation(key: str) -> bool:
    return key.startswith((names.CONTAINER_PREFIX, names.CLAIM_PARAMETERS_PREFIX)) or key == names.PLACEMENT


def has_rt_request(annotations: Mapping[str, str] | None) -> bool:
    """Whether a pod asks for any real-time reservation."""
    return any(k.startswith((names.CONTAINER_PREFIX, names.CLAIM_PARAMETERS_PREFIX)) for k in (annotations or {}))


def _check_container_name(name: str) -> list[Problem]:
    if not _CONTAINER_NAME.match(name):
        return [Problem(name, None, "is not a valid container name (a DNS label: a-z, 0-9 and '-', at most 63)")]
    return []


def parse_placement(annotations: Mapping[str, str], default: Placement = DEFAULT_PLACEMENT) -> Placement:
    value = annotations.get(names.PLACEMENT)
    if value is None:
        return default
    if value.strip() not in PLACEMENTS:
        raise InvalidRequest(
            [Problem(None, names.PLACEMENT, f"must be one of {', '.join(PLACEMENTS)}, got {value.strip()!r}")]
        )
    return cast(Placement, value.strip())


def _pod_container_names(pod: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The names of the pod's containers and init containers; a malformed spec has none (found by fuzzing
    the extender: ``"containers": 1`` was a TypeError, an HTTP 500; now the request names no container)."""
    spec = pod.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}

    def names_of(key: str) -> set[str]:
        items = spec.get(key)
        return {str(c.get("name")) for c in items if isinstance(c, Mapping)} if isinstance(items, list) else set()

    return names_of("containers"), names_of("initContainers")


def parse_pod(
    pod: Mapping[str, Any],
    claim_parameters: ClaimParametersLookup | None = None,
    *,
    limits: KernelLimits = DEFAULT_LIMITS,
    default_placement: Placement = DEFAULT_PLACEMENT,
) -> PodRequest | None:
    """The pod's request from its user annotations; ``None`` if it asks for nothing real-time.

    Raises :class:`InvalidRequest` with every problem found, not just the first.
    """
    metadata = pod.get("metadata") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    if not has_rt_request(annotations):
        return None
    namespace = str(metadata.get("namespace") or "default")
    regular, init = _pod_container_names(pod)
    problems: list[Problem] = []
    containers: dict[str, Reservation] = {}
    try:
        placement = parse_placement(annotations, default_placement)
    except InvalidRequest as err:
        problems += err.problems
        placement = default_placement
    for key in sorted(annotations):
        value = annotations[key]
        if key.startswith(names.CONTAINER_PREFIX):
            name, source = key[len(names.CONTAINER_PREFIX) :], "container"
        elif key.startswith(names.CLAIM_PARAMETERS_PREFIX):
            name, source = key[len(names.CLAIM_PARAMETERS_PREFIX) :], "claim-parameters"
        else:
            continue
        name_problems = _check_container_name(name)
        if name_problems:
            problems += name_problems
            continue
        if name in init and name not in regular:
            problems.append(Problem(name, None, "is an init container; only regular containers can hold a reservation"))
            continue
        if name not in regular:
            known = ", ".join(sorted(regular)) or "none"
            problems.append(Problem(name, None, f"is not a container of this pod (its containers: {known})"))
            continue
        if name in containers:
            problems.append(
                Problem(name, None, "has both a container.<name> and a claim-parameters.<name> request; keep one")
            )
            continue
        try:
            if source == "container":
                containers[name] = parse_container_value(name, str(value), limits)
            else:
                containers[name] = _resolve_claim_parameters(name, namespace, str(value), claim_parameters, limits)
        except InvalidRequest as err:
            problems += err.problems
            containers[name] = Reservation(0, 0, 0)  # placeholder so a duplicate is still reported
    if problems:
        raise InvalidRequest(problems)
    return PodRequest(containers=containers, placement=placement)


def _resolve_claim_parameters(
    container: str,
    namespace: str,
    object_name: str,
    lookup: ClaimParametersLookup | None,
    limits: KernelLimits,
) -> Reservation:
    object_name = object_name.strip()
    if not object_name:
        raise InvalidRequest([Problem(container, "claim-parameters", "names no RtClaimParameters object")])
    if lookup is None:
        raise InvalidRequest(
            [Problem(container, "claim-parameters", f"RtClaimParameters {object_name!r} cannot be resolved here")]
        )
    spec = lookup(namespace, object_name)
    if spec is None:
        raise InvalidRequest(
            [
                Problem(
                    container,
                    "claim-parameters",
                    f"RtClaimParameters {object_name!r} does not exist in namespace {namespace!r}",
                )
            ]
        )
    return reservation_from_claim_parameters(container, spec, limits)


def read_pod_request(
    pod: Mapping[str, Any],
    claim_parameters: ClaimParametersLookup | None = None,
    *,
    limits: KernelLimits = DEFAULT_LIMITS,
    default_placement: Placement = DEFAULT_PLACEMENT,
) -> PodRequest | None:
    """The request as the scheduler and the agent see it.

    The webhook's canonical spec annotation wins; a pod that bypassed the
    webhook is judged from its user annotations. Both are fully re-validated.
    """
    metadata = pod.get("metadata") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    spec = annotations.get(names.SPEC)
    if spec is None:
        return parse_pod(pod, claim_parameters, limits=limits, default_placement=default_placement)
    placement = parse_placement(annotations, default_placement)
    request = PodRequest.from_spec_json(spec, placement, limits)
    regular, _ = _pod_container_names(pod)
    unknown = sorted(set(request.containers) - regular)
    if unknown:
        raise InvalidRequest([Problem(n, None, "is not a container of this pod") for n in unknown])
    return request if request.containers else None
