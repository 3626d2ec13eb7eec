"""Placement on one node: which CPUs a pod's containers get, and how good a node is.

A container asking for ``cpus=k`` needs k *distinct* CPUs, each giving it the
full runtime every period. Containers of one pod are placed one after the
other, the largest bandwidth first, on the node's ledger; CPUs are chosen by

- ``best-fit`` (default): the CPUs with the least room that still fit, which
  keeps large holes for large requests (online bin packing's best bound);
- ``worst-fit``: the emptiest CPUs (the seed driver's choice);
- ``first-fit``: the lowest-numbered CPUs that fit.

A pod's ``placement`` decides both, through :func:`placement_policy` alone:
``pack`` prefers the node left fullest and best-fit CPUs; ``spread`` the
emptiest node and worst-fit CPUs. Node scores are 0..10 (what kube-scheduler's
extender protocol takes), normalised over the nodes being compared so the best
one stands out (:meth:`PlacementPolicy.scores`). The extender's filter, prioritize and bind and the simulator
all ask it, so ``rtdra simulate`` measures the policy the extender runs. The
seed driver's exact policy (per-mille utilisation, 950‰ per
CPU, worst-fit, deadlines ignored) is :func:`legacy_choose`, kept so the
simulator can compare against it; it is not used to admit anything.

The same :func:`place_pod` decides in the extender's filter and at bind, so a
node that passes the filter is a node bind can use.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from rtdra.bandwidth import BW_UNIT, percent
from rtdra.fit import DEFAULT_TEST, DeadlineTest, fits_root_domain
from rtdra.ledger import NodeLedger, PodAllocation, Slot
from rtdra.request import Placement, PodRequest, Reservation

CpuChoice = Literal["best-fit", "worst-fit", "first-fit"]
CPU_CHOICES: Final[tuple[CpuChoice, ...]] = ("best-fit", "worst-fit", "first-fit")
MAX_SCORE: Final = 10

#: The seed driver's accounting: per-mille utilisation, at most 950‰ per CPU.
LEGACY_CAP_PERMILLE: Final = 950


#: A node as scoring sees it: ``(used, capacity)`` in bandwidth units.
NodeLoad = tuple[int, int]


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    """What a pod's ``placement`` means on a node: which CPUs it takes and how good the node is."""

    placement: Placement
    cpu_choice: CpuChoice

    def scores(self, nodes: Sequence[NodeLoad | None], added: int) -> list[int]:
        """0..10 per node, normalised over the candidates (``None``: not a candidate, scores 0).

        A node is ranked by the share of its capacity left once the pod (``added``) is on
        it: ``pack`` wants the least, ``spread`` the most. The best candidates
        (and only they: the shares really tie) get :data:`MAX_SCORE`; the others
        0..9 by where their share lies between the best and the worst candidate.
        An absolute fill 0..10 would put every node between 60 % and 70 % full
        on one score, and kube-scheduler would pick among them at random.
        """
        return self.rank(_shares(nodes, added))

    def rank(self, shares: Sequence[int | None]) -> list[int]:
        """:meth:`scores` from the nodes' :func:`share_left` already computed (the extender keeps them)."""
        present = [s for s in shares if s is not None]
        if not present:
            return [0] * len(shares)
        low, high = min(present), max(present)
        span, steps = high - low, MAX_SCORE - 1
        if self.placement == "pack":  # the least share left is best; two comprehensions spare an abs() per node
            return [0 if s is None else MAX_SCORE if s == low else steps * (high - s) // span for s in shares]
        return [0 if s is None else MAX_SCORE if s == high else steps * (s - low) // span for s in shares]

    def best(self, nodes: Sequence[NodeLoad], added: int) -> int:
        """The index of the first node :meth:`scores` ranks highest (``nodes`` must not be empty)."""
        return self.best_share([s or 0 for s in _shares(nodes, added)])

    def best_share(self, shares: Sequence[int]) -> int:
        """:meth:`best` from the nodes' :func:`share_left` (``shares`` must not be empty)."""
        return shares.index(min(shares) if self.placement == "pack" else max(shares))

    def better(self, load: NodeLoad, than: NodeLoad, added: int) -> bool:
        """Whether ``load`` ranks strictly above ``than`` (:meth:`scores`' order, for one-by-one choices)."""
        share, other = share_left(load, added), share_left(than, added)
        return share < other if self.placement == "pack" else share > other


def _shares(nodes: Sequence[NodeLoad | None], added: int) -> list[int | None]:
    """:func:`share_left` of every node (``None`` stays ``None``), inlined: thousands of nodes per call."""
    unit = BW_UNIT
    return [
        None if load is None else max(load[1] - load[0] - added, 0) * unit // load[1] if load[1] > 0 else 0
        for load in nodes
    ]


def share_left(load: NodeLoad, added: int) -> int:
    """The share of a node's capacity left after adding ``added``, in units of ``BW_UNIT`` (0 for no capacity)."""
    used, capacity = load
    if capacity <= 0:
        return 0
    return max(capacity - used - added, 0) * BW_UNIT // capacity


_POLICIES: Final[Mapping[Placement, PlacementPolicy]] = {
    "pack": PlacementPolicy("pack", "best-fit"),
    "spread": PlacementPolicy("spread", "worst-fit"),
}


def placement_policy(placement: Placement) -> PlacementPolicy:
    """The one mapping of a placement to its CPU choice and node score."""
    return _POLICIES[placement]


def _rank(candidates: list[tuple[int, int]], choice: CpuChoice) -> list[int]:
    """``(residual, cpu)`` pairs ordered by ``choice``; ties go to the lower CPU."""
    if choice == "best-fit":
        ranked = sorted(candidates)
    elif choice == "worst-fit":
        ranked = sorted(candidates, key=lambda rc: (-rc[0], rc[1]))
    else:
        ranked = sorted(candidates, key=lambda rc: rc[1])
    return [cpu for _, cpu in ranked]


def slot_of(r: Reservation, cpu: int) -> Slot:
    """What a container's reservation becomes on one CPU: the one place a request turns into a ledger slot."""
    return Slot(cpu, r.runtime_ns, r.deadline_ns, r.period_ns)


@dataclass(frozen=True, slots=True)
class NoFit:
    """Why a pod does not fit a node, in words a person can act on."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class Fit:
    """The CPUs chosen for each container and the bandwidth the pod adds."""

    cpus: Mapping[str, tuple[int, ...]]
    bandwidth: int

    def allocation(
        self, request: PodRequest, uid: str, namespace: str, name: str, reserved_at: str = ""
    ) -> PodAllocation:
        containers = {c: tuple(slot_of(request.containers[c], cpu) for cpu in cpus) for c, cpus in self.cpus.items()}
        return PodAllocation(uid=uid, namespace=namespace, name=name, containers=containers, reserved_at=reserved_at)


def _order(request: PodRequest) -> list[tuple[str, Reservation]]:
    return sorted(request.containers.items(), key=lambda kv: (-kv[1].bandwidth, -kv[1].cpus, kv[0]))


def _quick_fit(ledger: NodeLedger, order: Sequence[tuple[str, Reservation]], choice: CpuChoice) -> Fit | None:
    """Implicit deadlines and enough CPUs with room for the largest: no search needed.

    Every container can then take CPUs of its own among those with room for
    the largest request, so the pod fits; the full search finds a placement
    too (it only has more choice). For one container the CPUs chosen here are
    exactly the full search's; for several, only the verdict is used.
    """
    largest = order[0][1].bandwidth
    need = sum(r.cpus for _, r in order)
    if ledger.count_with_residual(largest) < need:
        return None
    residuals = ledger.residuals
    start = bisect.bisect_left(residuals, (largest, -1))
    # residuals ascend by (residual, cpu): best-fit order already, the hot case.
    candidates = [cpu for _, cpu in residuals[start:]] if choice == "best-fit" else _rank(residuals[start:], choice)
    if any(ledger.has_constrained(cpu) for cpu in candidates[:need]):
        return None
    chosen: dict[str, tuple[int, ...]] = {}
    taken = 0
    for name, r in order:
        chosen[name] = tuple(sorted(candidates[taken : taken + r.cpus]))
        taken += r.cpus
    return Fit(cpus=chosen, bandwidth=sum(r.bandwidth * r.cpus for _, r in order))


def place_pod(
    ledger: NodeLedger,
    request: PodRequest,
    *,
    choice: CpuChoice | None = None,
    test: DeadlineTest = DEFAULT_TEST,
) -> Fit | NoFit:
    """Choose CPUs for every container of ``request`` on ``ledger``, or say why not.

    ``choice`` defaults to what the request's placement asks (:func:`placement_policy`).
    """
    if choice is None:
        choice = placement_policy(request.placement).cpu_choice
    if not ledger.ready:
        return NoFit(f"node {ledger.node} is not ready for real-time pods")
    if not ledger.capacities:
        return NoFit(f"node {ledger.node} has no real-time CPUs")
    order = _order(request)
    if not order:
        return Fit(cpus={}, bandwidth=0)
    total = pod_bandwidth(request)
    if not fits_root_domain(ledger.total_used, total, ledger.root_capacity):
        return NoFit(
            f"insufficient deadline bandwidth: the pod needs {percent(total)} of a CPU in all, "
            f"node has {percent(ledger.root_capacity - ledger.total_used)} left"
        )
    if len(order) == 1 and not order[0][1].constrained:
        quick = _quick_fit(ledger, order, choice)
        if quick is not None:
            return quick
    placed: list[Slot] = []
    chosen: dict[str, tuple[int, ...]] = {}
    for name, r in order:
        slot = slot_of(r, -1)
        extra_used: dict[int, int] = {}
        for s in placed:
            extra_used[s.cpu] = extra_used.get(s.cpu, 0) + s.bandwidth
        candidates = [
            (ledger.residual(cpu) - extra_used.get(cpu, 0), cpu)
            for cpu in ledger.cpus
            if ledger.fits(cpu, slot, extra=placed, test=test)
        ]
        if len(candidates) < r.cpus:
            return too_few_cpus(name, r, len(candidates))
        cpus = tuple(sorted(_rank(candidates, choice)[: r.cpus]))
        chosen[name] = cpus
        placed += [slot_of(r, cpu) for cpu in cpus]
    return Fit(cpus=chosen, bandwidth=total)


@functools.lru_cache(maxsize=4096)  # the filter meets the same few messages on thousands of nodes
def too_few_cpus(container: str, r: Reservation, have: int) -> NoFit:
    """Why a pod does not fit: only ``have`` CPUs have room for ``container``'s reservation."""
    return NoFit(
        f"insufficient deadline bandwidth: container {container} needs {r.cpus} "
        f"CPU{'s' if r.cpus != 1 else ''} with {percent(r.bandwidth)} free, node has {have}"
    )


def check_pod(
    ledger: NodeLedger,
    request: PodRequest,
    *,
    test: DeadlineTest = DEFAULT_TEST,
) -> NoFit | None:
    """Whether :func:`place_pod` would succeed (``None``) or why not, as cheaply as possible.

    This is the extender's filter: most nodes are decided by a bisection over
    the ledger's sorted residuals; only close calls run the full search.
    """
    order = _order(request)
    if ledger.ready and ledger.capacities and order and not any(r.constrained for _, r in order):
        total = sum(r.bandwidth * r.cpus for _, r in order)
        if fits_root_domain(ledger.total_used, total, ledger.root_capacity) and _quick_fit(ledger, order, "best-fit"):
            return None
    result = place_pod(ledger, request, test=test)
    return result if isinstance(result, NoFit) else None


def pod_bandwidth(request: PodRequest) -> int:
    """Σ over containers of bandwidth × CPUs: what the pod adds to a node."""
    return sum(r.bandwidth * r.cpus for r in request.containers.values())


def scores(ledgers: Sequence[NodeLedger | None], added_bw: int, placement: Placement) -> list[int]:
    """0..10 per ledger by the placement's policy (:meth:`PlacementPolicy.scores`), ``None``: not a candidate."""
    loads = [(n.total_used, n.total_capacity) if n is not None else None for n in ledgers]
    return placement_policy(placement).scores(loads, added_bw)


# ---------------------------------------------------------------------------
# The same decisions, prepared for many nodes (the extender's filter/prioritize)
# ---------------------------------------------------------------------------


#: More bandwidth than any node has (2**42 whole CPUs).
_NEVER: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class PodDemand:
    """What :func:`check_pod` derives from a request, derived once for a whole node list."""

    request: PodRequest
    order: tuple[tuple[str, Reservation], ...]
    bandwidth: int
    largest: int
    need: int
    #: The quick test may decide: some container, none with a constrained deadline.
    quick: bool
    #: ``bandwidth`` if ``quick``, else more than any node's room (:meth:`NodeDigest.surely_fits` never holds).
    quick_bandwidth: int

    @classmethod
    def of(cls, request: PodRequest) -> PodDemand:
        order = tuple(_order(request))
        quick = bool(order) and not any(r.constrained for _, r in order)
        bandwidth = pod_bandwidth(request)
        return cls(
            request=request,
            order=order,
            bandwidth=bandwidth,
            largest=order[0][1].bandwidth if order else 0,
            need=sum(r.cpus for _, r in order),
            quick=quick,
            quick_bandwidth=bandwidth if quick else _NEVER,
        )


@dataclass(frozen=True, slots=True)
class NodeDigest:
    """A ledger's totals, computed once per ledger value (the extender keeps one per node)."""

    ledger: NodeLedger
    ready: bool
    total_used: int
    total_capacity: int
    root_capacity: int
    #: Some slot on the node has a constrained deadline (then only the full search decides).
    constrained: bool
    #: Every CPU's residual bandwidth, ascending (``ledger.residuals`` without the CPU ids).
    residuals: tuple[int, ...]
    #: The root domain's bandwidth left where the quick test may decide (ready, CPUs, implicit
    #: deadlines only), else -1: the filter's common case is ``room >= bw`` and one residual.
    room: int
    #: ``(total_used, total_capacity)``, what scoring reads.
    load: NodeLoad

    @classmethod
    def of(cls, ledger: NodeLedger) -> NodeDigest:
        constrained = any(ledger.has_constrained(cpu) for cpu in ledger.capacities)
        quick = ledger.ready and bool(ledger.capacities) and not constrained
        return cls(
            ledger=ledger,
            ready=ledger.ready,
            total_used=ledger.total_used,
            total_capacity=ledger.total_capacity,
            root_capacity=ledger.root_capacity,
            constrained=constrained,
            residuals=tuple(residual for residual, _ in ledger.residuals),
            room=ledger.root_capacity - ledger.total_used if quick else -1,
            load=(ledger.total_used, ledger.total_capacity),
        )

    def surely_fits(self, demand: PodDemand) -> bool:
        """:func:`check_demand`'s common "fits" case alone: a comparison and one residual, no call below."""
        return (
            self.room >= demand.quick_bandwidth
            and len(self.residuals) >= demand.need
            and self.residuals[-demand.need] >= demand.largest
        )

    def has_cpus_with_residual(self, bw: int, need: int) -> bool:
        """Whether at least ``need`` CPUs have ``bw`` left: the need-th largest residual decides, in O(1)."""
        return 0 < need <= len(self.residuals) and self.residuals[-need] >= bw

    def cpus_with_residual(self, bw: int) -> int:
        """How many CPUs have at least ``bw`` left (``NodeLedger.count_with_residual``, on plain integers)."""
        return len(self.residuals) - bisect.bisect_left(self.residuals, bw)


def check_demand(digest: NodeDigest, demand: PodDemand, *, test: DeadlineTest = DEFAULT_TEST) -> NoFit | None:
    """Exactly :func:`check_pod`'s verdict (and reason), decided in O(log CPUs) for the common cases.

    With implicit deadlines everywhere a CPU fits a container iff its residual
    is at least the container's bandwidth, so once the root domain has room:

    - at least ``need`` CPUs with room for the largest container: every
      container gets CPUs of its own, the pod fits;
    - fewer CPUs with room for the largest container (placed first) than it
      asks for: :func:`place_pod` stops at that container with that count.

    Anything else (constrained deadlines, close calls between containers) goes
    to :func:`check_pod`.
    """
    if (
        demand.quick
        and digest.ready
        and digest.residuals
        and not digest.constrained
        and fits_root_domain(digest.total_used, demand.bandwidth, digest.root_capacity)
    ):
        if digest.has_cpus_with_residual(demand.largest, demand.need):
            return None
        name, first = demand.order[0]
        have = digest.cpus_with_residual(first.bandwidth)
        if have < first.cpus:
            return too_few_cpus(name, first, have)
    return check_pod(digest.ledger, demand.request, test=test)


# ---------------------------------------------------------------------------
# The seed driver's policy, for comparison only
# ---------------------------------------------------------------------------


def legacy_utilisation(r: Reservation | Slot) -> int:
    """The seed's per-mille utilisation, ``runtime * 1000 // period`` (deadline ignored)."""
    return r.runtime_ns * 1000 // r.period_ns


def legacy_choose(used_permille: Mapping[int, int], r: Reservation) -> tuple[int, ...] | None:
    """The seed's choice: the ``count`` least-used CPUs that stay within 950‰, or nothing."""
    u = legacy_utilisation(r)
    candidates = sorted((used, cpu) for cpu, used in used_permille.items() if used + u <= LEGACY_CAP_PERMILLE)
    if len(candidates) < r.cpus:
        return None
    return tuple(sorted(cpu for _, cpu in candidates[: r.cpus]))


def legacy_capacity_share() -> int:
    """The seed's per-CPU limit in the kernel's fixed point (950‰ of a CPU)."""
    return LEGACY_CAP_PERMILLE * BW_UNIT // 1000
