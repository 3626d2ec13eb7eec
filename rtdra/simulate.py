"""Placement quality: an online stream of real-time pods through each policy.

Pods arrive as a Poisson stream and leave after an exponential lifetime; the
offered load is ``arrival rate × mean lifetime × mean pod bandwidth / cluster
capacity``. Each policy sees the same stream (same seed) on its own copy of
the cluster and admits a pod only where its fit rule says it fits:

- ``pack`` and ``spread``: the extender's own policy for that placement
  (``rtdra.placement.placement_policy``: node score and CPU choice),
  kernel-exact accounting;
- ``dra`` and ``dra-pack``: DRA mode, where kube-scheduler's own DRA allocator
  books each CPU device's bandwidth capacity: the first CPUs that fit (it walks
  a pool's devices in order), a deadline shorter than the period booked at the
  density runtime/deadline (the webhook's capacity request: the per-CPU sum is
  all the allocator can test, where the extender runs the exact EDF test);
  the node is the default scoring's - the fewest pods (LeastAllocated counts
  every pod at its non-zero default request), ties broken at random, as
  kube-scheduler does - or, with the extender's optional DRA scoring
  (``dra-pack``), the extender's ``pack`` score;
- ``legacy``: the seed driver - per-mille utilisation, 950‰ per CPU, worst-fit
  CPUs, the least-loaded node first (the default scheduler's LeastAllocated);
  deadlines and the kernel's own servers are ignored, so it can promise more
  than the kernel will admit: we count those promises.

Everything here is pure and deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from rtdra.bandwidth import BW_UNIT, NSEC_PER_MSEC, NSEC_PER_USEC
from rtdra.ledger import NodeLedger
from rtdra.placement import (
    Fit,
    NodeLoad,
    legacy_choose,
    legacy_utilisation,
    place_pod,
    placement_policy,
    pod_bandwidth,
)
from rtdra.request import PodRequest, Reservation

Policy = Literal["pack", "spread", "dra", "dra-pack", "legacy"]
POLICIES: Final[tuple[Policy, ...]] = ("pack", "spread", "dra", "dra-pack", "legacy")
PERIODS_MS: Final = (1, 2, 5, 10, 20, 50, 100)


@dataclass(frozen=True, slots=True)
class Workload:
    """The stream's shape."""

    nodes: int = 10
    cpus: int = 8
    capacity: int = BW_UNIT
    load: float = 0.8
    arrivals: int = 4000
    #: ``(cpus, weight)``: how many distinct CPUs a pod asks for, and how often.
    mix: tuple[tuple[int, float], ...] = ((1, 0.6), (2, 0.3), (4, 0.1))
    min_utilisation: float = 0.05
    max_utilisation: float = 0.6
    #: Share of pods whose deadline is shorter than their period.
    constrained: float = 0.0
    seed: int = 1


@dataclass(frozen=True, slots=True)
class Arrival:
    time: float
    lifetime: float
    request: PodRequest

    @property
    def large(self) -> bool:
        return max(r.cpus for r in self.request.containers.values()) > 1


@dataclass(slots=True)
class Outcome:
    policy: Policy
    offered: int = 0
    accepted: int = 0
    offered_large: int = 0
    accepted_large: int = 0
    #: Time-integral of reserved bandwidth, for the admitted utilisation.
    reserved_area: float = 0.0
    duration: float = 0.0
    capacity: int = 0
    #: Admissions that left a CPU promised more than the kernel gives it (legacy only):
    #: refused by the kernel in partitioned mode, missed deadlines otherwise.
    beyond_kernel: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.offered if self.offered else 0.0

    @property
    def acceptance_large(self) -> float:
        return self.accepted_large / self.offered_large if self.offered_large else 0.0

    @property
    def utilisation(self) -> float:
        return self.reserved_area / (self.duration * self.capacity) if self.duration and self.capacity else 0.0


def _random_reservation(rng: random.Random, w: Workload) -> Reservation:
    cpus = rng.choices([c for c, _ in w.mix], weights=[p for _, p in w.mix])[0]
    period = rng.choice(PERIODS_MS) * NSEC_PER_MSEC
    utilisation = rng.uniform(w.min_utilisation, w.max_utilisation)
    runtime = max(NSEC_PER_USEC, round(period * utilisation / NSEC_PER_USEC) * NSEC_PER_USEC)
    deadline = period
    if rng.random() < w.constrained:
        deadline = rng.randint(runtime // NSEC_PER_USEC, period // NSEC_PER_USEC) * NSEC_PER_USEC
    return Reservation(runtime_ns=runtime, deadline_ns=deadline, period_ns=period, cpus=cpus)


def stream(w: Workload) -> list[Arrival]:
    """The arrivals, the same for every policy."""
    rng = random.Random(w.seed)
    requests = [PodRequest({"rt": _random_reservation(rng, w)}) for _ in range(w.arrivals)]
    mean_bw = sum(pod_bandwidth(r) for r in requests) / len(requests)
    lifetime = 1.0
    rate = w.load * w.nodes * w.cpus * w.capacity / (mean_bw * lifetime)
    time = 0.0
    out = []
    for request in requests:
        time += rng.expovariate(rate)
        out.append(Arrival(time=time, lifetime=rng.expovariate(1 / lifetime), request=request))
    return out


@dataclass(slots=True)
class _LegacyNode:
    #: Per-mille utilisation per CPU, as the seed counted it.
    used: dict[int, int]
    #: The same reservations in the kernel's fixed point, per CPU.
    kernel_used: dict[int, int]
    pods: dict[int, tuple[int, ...]] = field(default_factory=dict)


def run(policy: Policy, w: Workload, arrivals: Sequence[Arrival]) -> Outcome:
    """Replay ``arrivals`` through ``policy``."""
    outcome = Outcome(policy=policy, capacity=w.nodes * w.cpus * w.capacity)
    capacities = dict.fromkeys(range(w.cpus), w.capacity)
    ledgers = [NodeLedger(node=f"node-{i}", capacities=capacities) for i in range(w.nodes)]
    legacy = [
        _LegacyNode(used=dict.fromkeys(range(w.cpus), 0), kernel_used=dict.fromkeys(range(w.cpus), 0))
        for _ in range(w.nodes)
    ]
    departures: list[tuple[float, int, int, int]] = []  # (time, arrival index, node, bandwidth)
    rng = random.Random(w.seed)  # the scheduler's tie-breaks, the same for every run of this workload
    reserved = 0
    last = 0.0

    def advance(to: float) -> None:
        nonlocal reserved, last
        while departures and departures[0][0] <= to:
            t, index, node, bw = heapq.heappop(departures)
            outcome.reserved_area += reserved * (t - last)
            last = t
            reserved -= bw
            if policy == "legacy":
                r = arrivals[index].request.containers["rt"]
                for cpu in legacy[node].pods.pop(index):
                    legacy[node].used[cpu] -= legacy_utilisation(r)
                    legacy[node].kernel_used[cpu] -= r.bandwidth
            else:
                ledgers[node] = ledgers[node].release(str(index))
        outcome.reserved_area += reserved * (to - last)
        last = to

    for index, arrival in enumerate(arrivals):
        advance(arrival.time)
        outcome.offered += 1
        outcome.offered_large += arrival.large
        bw = pod_bandwidth(arrival.request)
        node = _admit(policy, arrival, index, ledgers, legacy, w, rng)
        if node is None:
            continue
        if policy == "legacy":
            r = arrival.request.containers["rt"]
            for cpu in legacy[node].pods[index]:
                legacy[node].kernel_used[cpu] += r.bandwidth
            if any(legacy[node].kernel_used[cpu] > w.capacity for cpu in legacy[node].pods[index]):
                outcome.beyond_kernel += 1
        outcome.accepted += 1
        outcome.accepted_large += arrival.large
        reserved += bw
        heapq.heappush(departures, (arrival.time + arrival.lifetime, index, node, bw))
    end = arrivals[-1].time if arrivals else 0.0
    advance(end)
    outcome.duration = end
    return outcome


def _admit(
    policy: Policy,
    arrival: Arrival,
    index: int,
    ledgers: list[NodeLedger],
    legacy: list[_LegacyNode],
    w: Workload,
    rng: random.Random,
) -> int | None:
    request = arrival.request
    if policy == "dra" or policy == "dra-pack":  # noqa: PLR1714 - mypy narrows ==, not in
        return _admit_dra(policy, arrival, index, ledgers, rng)
    if policy == "legacy":
        r = request.containers["rt"]
        order = sorted(range(w.nodes), key=lambda n: (sum(legacy[n].used.values()), n))
        for n in order:
            cpus = legacy_choose(legacy[n].used, r)
            if cpus is not None:
                for cpu in cpus:
                    legacy[n].used[cpu] += legacy_utilisation(r)
                legacy[n].pods[index] = cpus
                return n
        return None
    chosen = placement_policy(policy)
    added = pod_bandwidth(request)
    best: tuple[NodeLoad, int, Fit] | None = None
    for n, ledger in enumerate(ledgers):
        fit = place_pod(ledger, request, choice=chosen.cpu_choice)
        if isinstance(fit, Fit):
            load = (ledger.total_used, ledger.total_capacity)
            if best is None or chosen.better(load, best[0], added):
                best = (load, n, fit)
    if best is None:
        return None
    _, n, fit = best
    ledgers[n] = ledgers[n].reserve(fit.allocation(request, str(index), "sim", f"pod-{index}"))
    return n


def as_dra_booking(request: PodRequest) -> PodRequest:
    """What DRA mode books for ``request``: each CPU's share at the density runtime/deadline.

    The same number as ``rtdra.dra.capacity_request``: a reservation with the
    deadline as its period has exactly that bandwidth, and the ledger's test of
    it is then the per-CPU sum the allocator runs.
    """
    return PodRequest(
        {
            name: Reservation(runtime_ns=r.runtime_ns, deadline_ns=r.deadline_ns, period_ns=r.deadline_ns, cpus=r.cpus)
            for name, r in request.containers.items()
        },
        placement=request.placement,
    )


def _admit_dra(
    policy: Policy, arrival: Arrival, index: int, ledgers: list[NodeLedger], rng: random.Random
) -> int | None:
    booking = as_dra_booking(arrival.request)
    fits = [
        (n, fit)
        for n, ledger in enumerate(ledgers)
        if isinstance(fit := place_pod(ledger, booking, choice="first-fit"), Fit)
    ]
    if not fits:
        return None
    if policy == "dra-pack":
        pack = placement_policy("pack")
        added = pod_bandwidth(booking)
        ranked = pack.scores([(ledgers[n].total_used, ledgers[n].total_capacity) for n, _ in fits], added)
        fits = [nf for nf, score in zip(fits, ranked, strict=True) if score == max(ranked)]
    else:
        fewest = min(len(ledgers[n].pods) for n, _ in fits)
        fits = [(n, f) for n, f in fits if len(ledgers[n].pods) == fewest]
    n, fit = rng.choice(fits)  # kube-scheduler picks among the best-scored nodes at random
    ledgers[n] = ledgers[n].reserve(fit.allocation(booking, str(index), "sim", f"pod-{index}"))
    return n


def compare(w: Workload, policies: Sequence[Policy] = POLICIES) -> list[Outcome]:
    arrivals = stream(w)
    return [run(p, w, arrivals) for p in policies]


def table(rows: Sequence[tuple[float, Outcome]]) -> str:
    """The side-by-side table ``rtdra simulate`` prints."""
    header = f"{'load':>5}  {'policy':<8} {'accepted':>9} {'large':>8} {'admitted util':>14} {'beyond kernel':>14}"
    lines = [header, "-" * len(header)]
    for load, o in rows:
        lines.append(
            f"{load:>5.2f}  {o.policy:<8} {o.acceptance:>9.1%} {o.acceptance_large:>8.1%} "
            f"{o.utilisation:>14.1%} {o.beyond_kernel:>14d}"
        )
    return "\n".join(lines)
