"""Filter and prioritize decisions: the pod's request against the cached ledgers.

No arithmetic lives here: whether a pod fits a node is
``rtdra.placement.check_pod``, the score is ``rtdra.placement.PlacementPolicy.scores`` - the
same functions bind uses (``place_pod``), so a node that passes the filter is
one bind can use, as long as nothing was reserved on it in between.

Where a node goes when it fails:

- ``FailedNodes`` - the pod does not fit the room left, or not beside this
  process's binds to the node still in flight (``LedgerCache.assume``).
  Freeing reservations (preemption) could change that.
- ``FailedAndUnresolvableNodes`` - the node has no ledger, its ledger is not
  Ready, its agent has not renewed its Lease in time (``extender.heartbeats``),
  or the pod's request is invalid. Preemption cannot help, so the
  scheduler should not evict anyone for these.
"""

from __future__ import annotations

import functools
import threading
import time
from bisect import bisect_left
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from extender.cache import LedgerCache
from extender.heartbeats import AgentHeartbeats
from extender.wire import MIN_PRIORITY, FailedNodesMap, HostPriority, reason_text
from rtdra.bandwidth import percent
from rtdra.placement import NodeDigest, NodeLoad, PodDemand, check_demand, placement_policy, too_few_cpus
from rtdra.request import ClaimParametersLookup, InvalidRequest, Placement, PodRequest, read_pod_request


def no_ledger_reason(node: str) -> str:
    return f"node {node} has no NodeAllocationState (is the rt-dra agent running there?)"


def not_ready_reason(node: str, why: str = "") -> str:
    """Why a node with a NotReady ledger takes no RT pods: its agent's ``statusReason`` if it gave one."""
    return f"node {node} is not ready for real-time pods ({why or 'its NodeAllocationState is NotReady'})"


def in_flight_reason(node: str, in_flight: int, left: int, needs: int) -> str:
    """Why a node with room in its ledger is refused: binds to it in flight will take that room."""
    return (
        f"insufficient deadline bandwidth: binds in flight to node {node} take {percent(in_flight)} of a CPU, "
        f"leaving {percent(max(left, 0))}; the pod needs {percent(needs)}"
    )


def invalid_reason(err: InvalidRequest) -> str:
    return reason_text(f"invalid real-time request: {err}")


@dataclass(frozen=True, slots=True)
class PodView:
    """What the extender needs of a pod: its request (``None``: nothing real-time) or why it is invalid."""

    request: PodRequest | None
    invalid: str | None = None
    #: Identifies the pod and its request, for :class:`FitMemo` (empty: do not memoise).
    key: str = ""

    @classmethod
    def of(
        cls, pod: Mapping[str, Any], default_placement: Placement, claim_parameters: ClaimParametersLookup | None = None
    ) -> PodView:
        """The pod's view; ``claim_parameters`` resolves ``claim-parameters.<name>`` (without it they are invalid)."""
        try:
            request = read_pod_request(pod, claim_parameters, default_placement=default_placement)
        except InvalidRequest as err:
            return cls(None, invalid_reason(err))
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        key = f"{uid}/{request.placement}/{request.spec_json()}" if request is not None and uid else ""
        return cls(request, key=key)


#: How long prioritize may reuse the filter's list of nodes that fit (an agent falling silent meanwhile is
#: scored as the filter saw it; kube-scheduler calls prioritize right after filter, with the nodes that passed).
PASSED_FRESH_S: Final = 1.0


@dataclass(slots=True)
class _PodMemo:
    close: dict[str, tuple[NodeDigest, bool]] = field(default_factory=dict)
    #: ``(cache generation, when, node -> load)`` of the nodes the filter passed.
    passed: tuple[int, float, dict[str, NodeLoad]] | None = None


class FitMemo:
    """What the filter decided per pod, so that the prioritize call which follows need not decide again.

    - The nodes that passed, with their loads, while the ledger cache is at the
      same generation (nothing changed since) and for :data:`PASSED_FRESH_S`:
      prioritize then looks each node up and scores, deciding nothing.
    - Close calls (nodes the quick comparison did not decide), each reused only
      while the node's cached ledger is the very value it was decided on.

    A bounded number of pods is remembered (oldest dropped).
    """

    def __init__(self, pods: int = 64, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.pods = pods
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _PodMemo] = OrderedDict()

    def _entry(self, key: str, create: bool) -> _PodMemo | None:
        if not key:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            elif create:
                entry = self._entries[key] = _PodMemo()
                while len(self._entries) > self.pods:
                    self._entries.popitem(last=False)
            return entry

    def verdicts(self, key: str, *, create: bool) -> dict[str, tuple[NodeDigest, bool]] | None:
        """The close calls remembered for pod ``key`` (``create``: an empty record if none)."""
        entry = self._entry(key, create)
        return entry.close if entry is not None else None

    def keep_passed(self, key: str, generation: int, loads: dict[str, NodeLoad]) -> None:
        entry = self._entry(key, create=True)
        if entry is not None:
            entry.passed = (generation, self.clock(), loads)

    def passed(self, key: str, generation: int) -> dict[str, NodeLoad] | None:
        """The nodes the filter passed for pod ``key``, if nothing changed since and it is fresh."""
        entry = self._entry(key, create=False)
        if entry is None or entry.passed is None:
            return None
        kept_at, when, loads = entry.passed
        return loads if kept_at == generation and self.clock() - when <= PASSED_FRESH_S else None


@dataclass(slots=True)
class Verdicts:
    """The filter's outcome, node by node, in the order the nodes were sent."""

    passed: list[str] = field(default_factory=list)
    failed: FailedNodesMap = field(default_factory=dict)
    unresolvable: FailedNodesMap = field(default_factory=dict)
    #: How many nodes failed, by reason class (for metrics).
    reasons: Counter[str] = field(default_factory=Counter)


@functools.lru_cache(maxsize=4096)  # thousands of nodes share a few distinct reasons
def _wire_reason(reason: str) -> tuple[str, str]:
    return reason_text(reason), reason_class(reason)


def reason_class(reason: str) -> str:
    """A short, bounded label for a rejection reason."""
    if reason.startswith("insufficient deadline bandwidth"):
        return "insufficient_bandwidth"
    if "has no real-time CPUs" in reason:
        return "no_rt_cpus"
    return "other"


def filter_nodes(
    view: PodView,
    nodes: Sequence[str],
    cache: LedgerCache,
    memo: FitMemo | None = None,
    heartbeats: AgentHeartbeats | None = None,
    *,
    pick: bool = False,
) -> Verdicts:
    """Which of ``nodes`` have room for the pod, and why the others do not (``heartbeats``: whose agent is alive).

    ``pick`` (the ``pick`` verb): of the nodes with room, only the one the pod's placement ranks first
    passes - counting this process's binds in flight as load - so kube-scheduler, left with one node,
    neither scores nor calls prioritize. The others are neither passed nor failed.
    """
    verdicts = Verdicts()
    if view.invalid is not None:
        verdicts.unresolvable = dict.fromkeys(nodes, view.invalid)
        verdicts.reasons["invalid_request"] = len(verdicts.unresolvable)
        return verdicts
    if view.request is None:
        verdicts.passed = list(nodes)
        return verdicts
    demand = PodDemand.of(view.request)
    generation = cache.generation  # before reading any ledger: a change from now on makes the memo stale
    digests = cache.digests
    passed: dict[str, NodeLoad] = {}  # node -> load, in the order sent
    remembered = memo.verdicts(view.key, create=True) if memo is not None else None
    remember = remembered.__setitem__ if remembered is not None else None
    get, check = digests.get, check_demand  # hot loop: up to thousands of nodes
    silence = heartbeats.silence if heartbeats is not None else None
    now = heartbeats.clock() if heartbeats is not None else 0.0
    alive = heartbeats.alive_at(now) if heartbeats is not None else None
    # check_demand's two quick cases, inlined (a call per node would double the loop's cost): with room
    # in the root domain and implicit deadlines, the pod fits iff `need` CPUs have room for the largest
    # container, and fails as check_demand says if fewer CPUs than the first container asks have room for it.
    bandwidth, need, largest = demand.quick_bandwidth, demand.need, demand.largest
    first_bw, too_few, too_few_kind = 0, [], ""
    if demand.order:
        first_name, first = demand.order[0]
        first_bw = first.bandwidth
        too_few = [_wire_reason(too_few_cpus(first_name, first, have).reason)[0] for have in range(first.cpus)]
        too_few_kind = reason_class(too_few_cpus(first_name, first, 0).reason)
    failed, quick_failures = verdicts.failed, 0

    def decide(node: str, digest: NodeDigest) -> None:
        verdict = check(digest, demand)
        if remember is not None:
            remember(node, (digest, verdict is None))
        if verdict is None:
            passed[node] = digest.load
        else:
            text, kind = _wire_reason(verdict.reason)
            failed[node] = text
            verdicts.reasons[kind] += 1

    for node in nodes:
        digest = get(node)
        if digest is not None and digest.room >= bandwidth and (alive is None or alive(node)):
            residuals = digest.residuals
            if len(residuals) >= need and residuals[-need] >= largest:
                passed[node] = digest.load
            elif (have := len(residuals) - bisect_left(residuals, first_bw)) < len(too_few):
                failed[node] = too_few[have]
                quick_failures += 1
            else:
                decide(node, digest)  # a close call between containers
        elif digest is None:
            verdicts.unresolvable[node] = no_ledger_reason(node)
            verdicts.reasons["no_ledger"] += 1
        elif not digest.ready:
            verdicts.unresolvable[node] = not_ready_reason(node, digest.ledger.reason)
            verdicts.reasons["not_ready"] += 1
        elif silence is not None and (silent := silence(node, now)) is not None:
            verdicts.unresolvable[node] = silent
            verdicts.reasons["agent_silent"] += 1
        else:
            decide(node, digest)
    if quick_failures:
        verdicts.reasons[too_few_kind] += quick_failures
    assumed = cache.assumed()
    for node, in_flight in assumed.items():  # this process's binds not yet written: a few nodes
        digest = get(node)
        if (
            node in passed
            and digest is not None
            and ((left := digest.root_capacity - digest.total_used - in_flight) < demand.bandwidth)
        ):
            del passed[node]
            failed[node] = reason_text(in_flight_reason(node, in_flight, left, demand.bandwidth))
            verdicts.reasons["in_flight"] += 1
            cache.turned_away(node)
    if pick and len(passed) > 1:
        nodes_ = list(passed)
        loads = [(used + assumed.get(node, 0), capacity) for node, (used, capacity) in passed.items()]
        best = nodes_[placement_policy(view.request.placement).best(loads, demand.bandwidth)]
        passed = {best: passed[best]}
    verdicts.passed = list(passed)
    if memo is not None:
        memo.keep_passed(view.key, generation, passed)
    return verdicts


def prioritize_nodes(
    view: PodView,
    nodes: Sequence[str],
    cache: LedgerCache,
    memo: FitMemo | None = None,
    heartbeats: AgentHeartbeats | None = None,
) -> list[HostPriority]:
    """0..10 per node by the pod's placement, normalised over the nodes it fits; the others get 0."""
    if view.request is None:
        return [{"Host": node, "Score": MIN_PRIORITY} for node in nodes]
    demand = PodDemand.of(view.request)
    policy = placement_policy(view.request.placement)
    passed = memo.passed(view.key, cache.generation) if memo is not None else None
    if passed is not None:  # the filter's nodes, nothing changed since: look up, decide nothing
        scores = policy.scores(list(map(passed.get, nodes)), demand.bandwidth)
        return [{"Host": node, "Score": score} for node, score in zip(nodes, scores, strict=True)]
    digests = cache.digests
    remembered = (memo.verdicts(view.key, create=False) if memo is not None else None) or {}
    loads: list[NodeLoad | None] = []
    add, get, recall = loads.append, digests.get, remembered.get  # hot loop
    alive = heartbeats.alive_at(heartbeats.clock()) if heartbeats is not None else None
    bandwidth, need, largest = demand.quick_bandwidth, demand.need, demand.largest
    first_bw, first_cpus = (demand.order[0][1].bandwidth, demand.order[0][1].cpus) if demand.order else (0, 0)

    def fits(node: str, digest: NodeDigest) -> bool:
        seen = recall(node)
        return seen[1] if seen is not None and seen[0] is digest else check_demand(digest, demand) is None

    for node in nodes:
        digest = get(node)
        if digest is None or not digest.ready or (alive is not None and not alive(node)):
            add(None)
        elif digest.room >= bandwidth:  # filter_nodes' quick cases
            residuals = digest.residuals
            if len(residuals) >= need and residuals[-need] >= largest:
                add(digest.load)
            elif len(residuals) - bisect_left(residuals, first_bw) < first_cpus:
                add(None)
            else:
                add(digest.load if fits(node, digest) else None)
        else:
            add(digest.load if fits(node, digest) else None)
    scores = policy.scores(loads, demand.bandwidth)
    return [{"Host": node, "Score": score} for node, score in zip(nodes, scores, strict=True)]
