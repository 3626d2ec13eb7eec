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
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from extender.cache import LedgerCache
from extender.heartbeats import AgentHeartbeats
from extender.wire import MIN_PRIORITY, FailedNodesMap, HostPriority, reason_text
from rtdra.bandwidth import percent
from rtdra.placement import NodeDigest, PodDemand, check_demand, placement_policy, share_left, too_few_cpus
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
    #: Identifies the request (placement and reservations, not the pod): pods with equal keys
    #: share one :class:`FitIndex`.
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
        return cls(request, key=demand_key(request) if request is not None else "")


def demand_key(request: PodRequest) -> str:
    """The :class:`FitIndex` key of a request: equal for requests every node judges alike."""
    return f"{request.placement}/{request.spec_json()}"


class FitIndex:
    """One pod demand's verdict on every node in the ledger cache, kept current as ledgers change.

    This is the filter's per-node summary: built in one pass over the cache the
    first time a demand is seen, and from then on only the nodes whose ledger
    changed (the cache tells it, :meth:`LedgerCache.index`) are decided again,
    by the same :func:`check_demand`. A filter or prioritize call over
    thousands of nodes is then a lookup per node. Pods of one Deployment, or
    of one burst, share a demand.

    - :attr:`shares`: the nodes the pod fits, with the share of the node left
      once it is there (what scoring ranks, :func:`share_left`);
    - :attr:`failed`: the nodes it does not fit, with the reason as sent.

    A node whose ledger is not Ready, or that the cache does not hold, is in neither (the filter
    looks at those one by one, from the digest).
    """

    def __init__(self, demand: PodDemand, cache: LedgerCache) -> None:
        self.demand = demand
        self.shares: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        self._cache = cache
        self._dirty: set[str] = set()
        self._built = False
        self._lock = threading.Lock()
        self._too_few: list[str] = []
        if demand.order:
            name, first = demand.order[0]
            self._too_few = [_wire_reason(too_few_cpus(name, first, have).reason)[0] for have in range(first.cpus)]

    def changed(self, node: str) -> None:
        self._dirty.add(node)  # one set operation: atomic under the GIL, taken in by current()

    def current(self) -> FitIndex:
        """Decide again every node changed since the last call (the first call decides every node).

        Under a lock, so a call that returns has taken in every change the cache
        made before the call began - also those another thread was deciding
        (a room signal is sent only after the cache told its indexes).
        """
        with self._lock:
            if not self._built:
                self._dirty.clear()  # changes from now on are decided again below
                for node, digest in tuple(self._cache.digests.items()):
                    self._decide(node, digest)
                self._built = True
            dirty, digests = self._dirty, self._cache.digests
            while dirty:
                try:
                    node = dirty.pop()
                except KeyError:  # pragma: no cover - emptied between the test and the pop
                    break
                self.shares.pop(node, None)
                self.failed.pop(node, None)
                now = digests.get(node)
                if now is not None:
                    self._decide(node, now)
        return self

    def _decide(self, node: str, digest: NodeDigest) -> None:
        demand = self.demand
        if not digest.ready:
            return
        # check_demand's two quick cases first (as it decides them), then the rest through it
        if digest.room >= demand.quick_bandwidth:
            residuals = digest.residuals
            if len(residuals) >= demand.need and residuals[-demand.need] >= demand.largest:
                self.shares[node] = share_left(digest.load, demand.bandwidth)
                return
            have = len(residuals) - bisect_left(residuals, demand.order[0][1].bandwidth)
            if have < len(self._too_few):
                self.failed[node] = self._too_few[have]
                return
        verdict = check_demand(digest, demand)
        if verdict is None:
            self.shares[node] = share_left(digest.load, demand.bandwidth)
        else:
            self.failed[node] = _wire_reason(verdict.reason)[0]


def fit_index(cache: LedgerCache, view: PodView) -> FitIndex:
    """The current :class:`FitIndex` of ``view``'s request (which must be real-time and valid)."""
    assert view.request is not None
    request = view.request
    return cache.index(view.key or demand_key(request), lambda: FitIndex(PodDemand.of(request), cache)).current()


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
    heartbeats: AgentHeartbeats | None = None,
    *,
    pick: bool = False,
) -> Verdicts:
    """Which of ``nodes`` have room for the pod, and why the others do not (``heartbeats``: whose agent is alive).

    Looks the nodes up in the request's :class:`FitIndex` (and the set of live
    agents); only nodes that do not pass are looked at one by one.

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
    index = fit_index(cache, view)
    demand = index.demand
    now = heartbeats.clock() if heartbeats is not None else 0.0
    alive = heartbeats.alive_nodes(now) if heartbeats is not None else None
    fits = index.shares
    # the common case, a lookup per node (and one more, in C, while every agent is alive)
    passed = [n for n in nodes if n in fits]
    if alive is not None and not alive.issuperset(passed):
        passed = [n for n in passed if n in alive]
    failed, unresolvable, reasons = verdicts.failed, verdicts.unresolvable, verdicts.reasons

    def one_by_one(node: str) -> None:
        """A node the lookups did not pass or fail: no ledger, not Ready, its agent silent (as the loop in
        check_demand's order would find), or changed by another thread's :meth:`FitIndex.current` meanwhile."""
        digest = cache.digests.get(node)
        if digest is None:
            unresolvable[node] = no_ledger_reason(node)
            reasons["no_ledger"] += 1
        elif not digest.ready:
            unresolvable[node] = not_ready_reason(node, digest.ledger.reason)
            reasons["not_ready"] += 1
        elif heartbeats is not None and (reason := heartbeats.silence(node, now)) is not None:
            unresolvable[node] = reason
            reasons["agent_silent"] += 1
        elif (verdict := check_demand(digest, demand)) is None:
            passed.append(node)  # after the others: its agent renewed its Lease since alive_nodes looked
        else:
            text, kind = _wire_reason(verdict.reason)
            failed[node] = text
            reasons[kind] += 1

    if len(passed) < len(nodes):
        known = index.failed.get
        failed.update({n: reason for n in nodes if (reason := known(n)) is not None})
        for reason, count in Counter(failed.values()).items():
            reasons[reason_class(reason)] += count
        silent = [] if alive is None else [n for n in failed if n not in alive]
        decided = len(passed) + len(failed)
        if decided < len(nodes):  # no ledger, not Ready, or a live node's agent silent: one by one
            taken = set(passed).union(failed)
            silent += [n for n in nodes if n not in taken]
        for node in silent:
            if (text := failed.pop(node, None)) is not None:
                reasons[reason_class(text)] -= 1
            one_by_one(node)
        reasons += Counter()  # drops the classes brought back to 0
    assumed = cache.assumed()
    digests = cache.digests
    for node, in_flight in assumed.items():  # this process's binds not yet written: a few nodes
        digest = digests.get(node)
        if (
            node in fits
            and digest is not None
            and ((left := digest.root_capacity - digest.total_used - in_flight) < demand.bandwidth)
            and node in passed
        ):
            passed.remove(node)
            failed[node] = reason_text(in_flight_reason(node, in_flight, left, demand.bandwidth))
            reasons["in_flight"] += 1
            cache.turned_away(node)
    if pick and len(passed) > 1:
        shares: list[int | None] = list(map(fits.get, passed))
        # binds in flight count as load (a few nodes); a node another thread's index update took out meanwhile
        # is ranked from its digest
        again = {passed.index(node) for node in assumed if node in fits and node in passed}
        if None in shares:
            again.update(i for i, share in enumerate(shares) if share is None)
        for i in again:
            digest = digests.get(passed[i])
            load = (digest.total_used + assumed.get(passed[i], 0), digest.total_capacity) if digest else (0, 0)
            shares[i] = share_left(load, demand.bandwidth)
        best = placement_policy(view.request.placement).best_share(cast("list[int]", shares))  # no None left
        passed = [passed[best]]
    verdicts.passed = passed
    return verdicts


def prioritize_nodes(view: PodView, nodes: Sequence[str], cache: LedgerCache) -> list[HostPriority]:
    """0..10 per node by the pod's placement, normalised over the nodes it fits; the others get 0.

    A lookup per node in the request's :class:`FitIndex`, which holds each fitting node's share left.
    Whether a node's agent is alive is the filter's question: kube-scheduler sends prioritize the nodes
    that passed it moments ago, and scores only choose among those.
    """
    if view.request is None:
        return [{"Host": node, "Score": MIN_PRIORITY} for node in nodes]
    shares = list(map(fit_index(cache, view).shares.get, nodes))
    scores = placement_policy(view.request.placement).rank(shares)
    return [{"Host": node, "Score": score} for node, score in zip(nodes, scores, strict=True)]
