"""The node ledger: what a node can give and what has been promised on it.

A :class:`NodeLedger` is an immutable value: the node's allocatable CPUs with
their deadline capacity (measured by the node agent), the reservations made
per pod UID and container (one :class:`Slot` per CPU), the agent's records of
what it prepared, and readiness. :meth:`NodeLedger.reserve` and
:meth:`NodeLedger.release` return new ledgers; they are idempotent and
``reserve`` refuses anything that would break a fit rule of ``rtdra.fit``, so
no sequence of calls can overcommit a CPU.

It serialises to and from the seed driver's ``NodeAllocationState`` shape
(``allocatableCpuset``, ``allocatedClaims``, ``preparedClaims``, ``status``),
with times in nanoseconds and named so (``runtimeNs``); claims are keyed by
pod UID. Storing it in the API (with optimistic concurrency) is
``rtdra.store``'s job, not this module's.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from rtdra import names
from rtdra.bandwidth import BW_UNIT, bandwidth, percent
from rtdra.fit import DEFAULT_TEST, DeadlineTest, fits_on_cpu, fits_root_domain, is_constrained

READY: Final = "Ready"
NOT_READY: Final = "NotReady"


class LedgerError(ValueError):
    """A reservation the ledger refuses; the message says why."""


class Overcommit(LedgerError):
    """The reservation does not fit the capacity left."""


class Conflict(LedgerError):
    """The pod already holds a different reservation on this node."""


@dataclass(frozen=True, slots=True)
class Slot:
    """One reservation on one CPU."""

    cpu: int
    runtime_ns: int
    deadline_ns: int
    period_ns: int

    @property
    def bandwidth(self) -> int:
        return bandwidth(self.runtime_ns, self.period_ns)

    def timing_json(self) -> dict[str, int]:
        """The slot's timing as every RT-DRA record writes it: ``runtimeNs``, ``deadlineNs``, ``periodNs``."""
        return {"runtimeNs": self.runtime_ns, "deadlineNs": self.deadline_ns, "periodNs": self.period_ns}

    def to_json(self) -> dict[str, int]:
        """The one wire shape of a slot (NAS claims, the agent's records): ``{"id": cpu, **timing}``."""
        return {"id": self.cpu, **self.timing_json()}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], cpu: int | None = None) -> Slot:
        """A slot from :meth:`to_json`'s shape (``cpu`` given: from :meth:`timing_json`'s)."""
        return cls(
            int(obj["id"]) if cpu is None else cpu,
            int(obj["runtimeNs"]),
            int(obj["deadlineNs"]),
            int(obj["periodNs"]),
        )


@dataclass(frozen=True, slots=True)
class PodAllocation:
    """Everything reserved for one pod on one node, by container."""

    uid: str
    namespace: str
    name: str
    containers: Mapping[str, tuple[Slot, ...]]
    #: RFC 3339 time of the reservation; lets a reconciler release reservations never bound.
    reserved_at: str = ""

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(s for name in sorted(self.containers) for s in self.containers[name])

    @property
    def bandwidth(self) -> int:
        return sum(s.bandwidth for s in self.slots)

    def cpus_of(self, container: str) -> tuple[int, ...]:
        return tuple(s.cpu for s in self.containers.get(container, ()))

    def same_reservation(self, other: PodAllocation) -> bool:
        return self.uid == other.uid and dict(self.containers) == dict(other.containers)


@dataclass(frozen=True)
class NodeLedger:
    """A node's deadline capacity and the reservations held on it."""

    node: str
    #: CPU id -> bandwidth left for tasks on it (kernel fixed point; 1 << 20 is a whole CPU).
    capacities: Mapping[int, int]
    pods: Mapping[str, PodAllocation] = field(default_factory=dict)
    #: The agent's per-pod records of what it prepared (kept as the agent wrote them).
    prepared: Mapping[str, Any] = field(default_factory=dict)
    ready: bool = True
    #: Why the node is not ready, in words for the extender's filter (e.g. it serves RT pods through DRA).
    reason: str = ""
    #: Free deadline bandwidth of the node's root domain as the kernel counts it,
    #: if the agent measured it; else the sum of the CPUs' capacities.
    root_domain_capacity: int | None = None
    resource_version: str | None = None

    # Derived views, computed once per value (the value never changes).
    _used: dict[int, int] = field(init=False, repr=False, compare=False)
    _slots: dict[int, list[Slot]] = field(init=False, repr=False, compare=False)
    _residuals: list[tuple[int, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        used = dict.fromkeys(self.capacities, 0)
        slots: dict[int, list[Slot]] = {cpu: [] for cpu in self.capacities}
        for pod in self.pods.values():
            for slot in pod.slots:
                used[slot.cpu] = used.get(slot.cpu, 0) + slot.bandwidth
                slots.setdefault(slot.cpu, []).append(slot)
        object.__setattr__(self, "_used", used)
        object.__setattr__(self, "_slots", slots)
        residuals = sorted((self.capacities[c] - used[c], c) for c in self.capacities)
        object.__setattr__(self, "_residuals", residuals)

    # -- reading ----------------------------------------------------------

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(sorted(self.capacities))

    def used(self, cpu: int) -> int:
        return self._used.get(cpu, 0)

    def residual(self, cpu: int) -> int:
        return self.capacities.get(cpu, 0) - self.used(cpu)

    def slots_on(self, cpu: int) -> tuple[Slot, ...]:
        return tuple(self._slots.get(cpu, ()))

    def has_constrained(self, cpu: int) -> bool:
        return any(is_constrained(s) for s in self._slots.get(cpu, ()))

    @property
    def residuals(self) -> list[tuple[int, int]]:
        """``(residual, cpu)`` for every CPU, ascending; shared, do not modify."""
        return self._residuals

    def count_with_residual(self, bw: int) -> int:
        """How many CPUs have at least ``bw`` left (by bandwidth alone)."""
        return len(self._residuals) - bisect.bisect_left(self._residuals, (bw, -1))

    @property
    def total_capacity(self) -> int:
        return sum(self.capacities.values())

    @property
    def total_used(self) -> int:
        return sum(self._used.values())

    @property
    def root_capacity(self) -> int:
        return self.total_capacity if self.root_domain_capacity is None else self.root_domain_capacity

    def fits(self, cpu: int, slot_like: Slot, *, extra: Iterable[Slot] = (), test: DeadlineTest = DEFAULT_TEST) -> bool:
        """Whether ``slot_like`` fits on ``cpu`` beside what is there and ``extra``."""
        if cpu not in self.capacities:
            return False
        extra = [s for s in extra if s.cpu == cpu]
        existing = [*self._slots.get(cpu, ()), *extra]
        used = self._used.get(cpu, 0) + sum(s.bandwidth for s in extra)
        return fits_on_cpu(existing, slot_like, self.capacities[cpu], used_bw=used, test=test)

    # -- changing (returns new values) --------------------------------------

    def reserve(self, allocation: PodAllocation, *, test: DeadlineTest = DEFAULT_TEST) -> NodeLedger:
        """The ledger with ``allocation`` added; unchanged if it is already there.

        Raises :class:`Conflict` if the pod holds a different reservation and
        :class:`Overcommit` if any slot does not fit.
        """
        held = self.pods.get(allocation.uid)
        if held is not None:
            if held.same_reservation(allocation):
                return self
            raise Conflict(
                f"pod {allocation.namespace}/{allocation.name} already holds a different reservation on {self.node}"
            )
        placed: list[Slot] = []
        for container in sorted(allocation.containers):
            cpus = [s.cpu for s in allocation.containers[container]]
            if len(set(cpus)) != len(cpus):
                raise LedgerError(f"container {container}: its CPUs must be distinct, got {cpus}")
            for slot in allocation.containers[container]:
                if slot.cpu not in self.capacities:
                    raise LedgerError(f"container {container}: CPU {slot.cpu} is not allocatable on {self.node}")
                if not self.fits(slot.cpu, slot, extra=placed, test=test):
                    raise Overcommit(
                        f"container {container}: CPU {slot.cpu} on {self.node} has {percent(self.residual(slot.cpu))} "
                        f"free, needs {percent(slot.bandwidth)}"
                    )
                placed.append(slot)
        if not fits_root_domain(self.total_used, allocation.bandwidth, self.root_capacity):
            raise Overcommit(f"node {self.node}: the root domain's deadline bandwidth would be exceeded")
        return replace(self, pods={**self.pods, allocation.uid: allocation})

    def release(self, uid: str) -> NodeLedger:
        """The ledger without pod ``uid``'s reservation (unchanged if it has none).

        The agent's ``prepared`` record of the pod stays: it says what is still
        applied in the kernel, and only the agent, once it has undone that,
        removes it. (The extender owns ``pods``, the agent ``prepared``.)
        """
        if uid not in self.pods:
            return self
        return replace(self, pods={k: v for k, v in self.pods.items() if k != uid})

    # -- the NodeAllocationState shape ---------------------------------------

    def summary(self) -> dict[str, Any]:
        total = self.total_capacity
        return {
            "cpus": len(self.capacities),
            "pods": len(self.pods),
            "reserved": percent(self.total_used * BW_UNIT // total) if total else "0.0%",
        }

    def to_nas(self, namespace: str = names.DEFAULT_NAMESPACE) -> dict[str, Any]:
        """The ``NodeAllocationState`` object for this ledger."""
        metadata: dict[str, Any] = {"name": self.node, "namespace": namespace}
        if self.resource_version is not None:
            metadata["resourceVersion"] = self.resource_version
        spec: dict[str, Any] = {
            "allocatableCpuset": [{"rtcpu": {"id": cpu, "capacity": self.capacities[cpu]}} for cpu in self.cpus],
            "allocatedClaims": {uid: _allocation_to_nas(pod) for uid, pod in sorted(self.pods.items())},
            "preparedClaims": dict(self.prepared),
        }
        if self.root_domain_capacity is not None:
            spec["rootDomainCapacity"] = self.root_domain_capacity
        return {
            "apiVersion": f"{names.NAS_GROUP}/{names.NAS_VERSION}",
            "kind": names.NAS_KIND,
            "metadata": metadata,
            "spec": spec,
            "status": READY if self.ready else NOT_READY,
            "summary": self.summary(),
            **({"statusReason": self.reason} if self.reason and not self.ready else {}),
        }

    @classmethod
    def from_nas(cls, obj: Mapping[str, Any]) -> NodeLedger:
        """Read a ``NodeAllocationState`` object (as the API returns it)."""
        metadata = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        capacities: dict[int, int] = {}
        for entry in spec.get("allocatableCpuset") or []:
            rtcpu = entry.get("rtcpu") or {}
            capacities[int(rtcpu["id"])] = int(rtcpu.get("capacity", 0))
        pods = {
            str(uid): _allocation_from_nas(str(uid), claim)
            for uid, claim in (spec.get("allocatedClaims") or {}).items()
        }
        root = spec.get("rootDomainCapacity")
        return cls(
            node=str(metadata.get("name", "")),
            capacities=capacities,
            pods=pods,
            prepared=dict(spec.get("preparedClaims") or {}),
            ready=obj.get("status") == READY,
            reason=str(obj.get("statusReason") or ""),
            root_domain_capacity=int(root) if root is not None else None,
            resource_version=metadata.get("resourceVersion"),
        )


def _allocation_to_nas(pod: PodAllocation) -> dict[str, Any]:
    return {
        "namespace": pod.namespace,
        "name": pod.name,
        "reservedAt": pod.reserved_at,
        "containers": {
            name: {"rtcpu": {"cpuset": [s.to_json() for s in slots]}} for name, slots in sorted(pod.containers.items())
        },
    }


def _allocation_from_nas(uid: str, claim: Mapping[str, Any]) -> PodAllocation:
    containers = {
        str(name): tuple(Slot.from_json(c) for c in ((entry.get("rtcpu") or {}).get("cpuset") or []))
        for name, entry in (claim.get("containers") or {}).items()
    }
    return PodAllocation(
        uid=uid,
        namespace=str(claim.get("namespace", "")),
        name=str(claim.get("name", "")),
        containers=containers,
        reserved_at=str(claim.get("reservedAt", "")),
    )


def allocation_annotation(allocation: PodAllocation, node: str) -> str:
    """The ``rt.resource.example.com/allocation`` value: the node and, per container, its CPUs and timing.

    All slots of a container share their timing, so it is written once,
    in :meth:`Slot.timing_json`'s keys, beside the CPUs.
    """
    containers = {
        name: {"cpus": [s.cpu for s in slots], **slots[0].timing_json()}
        for name, slots in sorted(allocation.containers.items())
        if slots
    }
    return json.dumps({"node": node, "containers": containers}, sort_keys=True, separators=(",", ":"))


def released_annotation(node: str, reserved_at: str) -> str:
    """The ``rt.resource.example.com/released`` value naming the reservation released on ``node``."""
    return json.dumps({"node": node, "reservedAt": reserved_at}, sort_keys=True, separators=(",", ":"))


def released_reservation(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(node, reservedAt)`` of the reservation the pod's ``released`` annotation names, if any."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(names.RELEASED)
    if not value:
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    node, reserved_at = parsed.get("node"), parsed.get("reservedAt")
    return (node, reserved_at) if isinstance(node, str) and isinstance(reserved_at, str) else None


def release_if_held(ledger: NodeLedger, allocations: Mapping[str, str]) -> NodeLedger:
    """Release each pod UID of ``allocations`` whose reservation is still the one reserved at the time given.

    Releases are decided on a ledger read earlier; a reservation of the same pod made since (a later bind,
    after this one was released) has another ``reservedAt`` and stays.
    """
    for uid, reserved_at in allocations.items():
        held = ledger.pods.get(uid)
        if held is not None and held.reserved_at == reserved_at:
            ledger = ledger.release(uid)
    return ledger
