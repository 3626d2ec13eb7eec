"""The extender's fast filter decides exactly as the core's placement, and its index never serves a stale verdict."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.cache import MAX_INDEXES, LedgerCache
from extender.decide import FitIndex, PodView, demand_key, filter_nodes, prioritize_nodes, reason_class
from extender.heartbeats import AgentHeartbeats
from extender.wire import reason_text
from rtdra.ledger import LedgerError, NodeLedger, PodAllocation, Slot
from rtdra.placement import NodeDigest, PodDemand, check_demand, check_pod, placement_policy, scores
from rtdra.request import PodRequest, Reservation

MS = 1_000_000
CAP = 943719

periods = st.sampled_from([1 * MS, 5 * MS, 10 * MS, 20 * MS])


@st.composite
def reservations(draw: st.DrawFn, max_cpus: int = 3) -> Reservation:
    period = draw(periods)
    deadline = draw(st.one_of(st.just(period), st.integers(period // 4, period)))
    runtime = draw(st.integers(1024, max(1024, deadline * 6 // 10)))
    return Reservation(runtime, deadline, period, draw(st.integers(1, max_cpus)))


@st.composite
def ledgers(draw: st.DrawFn) -> NodeLedger:
    cpus = draw(st.integers(0, 6))
    ledger = NodeLedger("n", dict.fromkeys(range(cpus), CAP), ready=draw(st.booleans()) or draw(st.booleans()))
    if draw(st.booleans()):
        ledger = NodeLedger("n", ledger.capacities, ready=ledger.ready, root_domain_capacity=CAP * cpus * 3 // 4)
    for i in range(draw(st.integers(0, 12))):
        r = draw(reservations(max_cpus=1))
        cpu = draw(st.integers(0, max(0, cpus - 1)))
        with contextlib.suppress(LedgerError):  # draws that would overcommit are simply not reserved
            ledger = ledger.reserve(
                PodAllocation(f"u{i}", "ns", f"p{i}", {"c": (Slot(cpu, r.runtime_ns, r.deadline_ns, r.period_ns),)})
            )
    return ledger


requests_ = st.dictionaries(st.sampled_from(["a", "b", "c"]), reservations(), min_size=1, max_size=3).map(PodRequest)


@settings(max_examples=400, deadline=None)
@given(ledger=ledgers(), request=requests_)
def test_check_demand_gives_check_pods_verdict_and_reason(ledger: NodeLedger, request: PodRequest) -> None:
    fast = check_demand(NodeDigest.of(ledger), PodDemand.of(request))
    slow = check_pod(ledger, request)
    assert (fast is None) == (slow is None)
    assert fast == slow


def lease(node: str) -> dict[str, object]:
    """An agent's Lease as kube-apiserver returns it (the fields the heartbeats read)."""
    return {
        "kind": "Lease",
        "apiVersion": "coordination.k8s.io/v1",
        "metadata": {"name": f"rtdra-agent-{node}", "namespace": "rt-dra", "resourceVersion": "812"},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": "2026-11-30T11:45:00.000000Z"},
    }


@settings(max_examples=400, deadline=None)
@given(ledger=ledgers(), request=requests_, silent=st.booleans())
def test_the_filters_quick_pass_agrees_with_check_pod(ledger: NodeLedger, request: PodRequest, silent: bool) -> None:
    digest, demand = NodeDigest.of(ledger), PodDemand.of(request)
    if digest.surely_fits(demand):
        assert check_pod(ledger, request) is None
    view = PodView(request, key="u/pack/x")
    heartbeats = AgentHeartbeats("rt-dra", 10.0, clock=lambda: 100.0)
    heartbeats.replace_all([] if silent else [lease(ledger.node)])
    verdicts = filter_nodes(view, [ledger.node], LedgerCache([ledger]), heartbeats)
    slow = check_pod(ledger, request)
    assert (verdicts.passed == [ledger.node]) == (not silent and slow is None)
    if verdicts.passed:
        assert not verdicts.reasons
    else:
        assert sum(verdicts.reasons.values()) == 1
    if not silent and ledger.ready and slow is not None:
        assert verdicts.failed == {ledger.node: reason_text(slow.reason)}
        assert verdicts.reasons == {reason_class(slow.reason): 1}
    scored = prioritize_nodes(view, [ledger.node], LedgerCache([ledger]))  # the nodes the filter passed, or any
    assert (scored[0]["Score"] == 10) == (ledger.ready and slow is None)


@settings(max_examples=200, deadline=None)
@given(ledger=ledgers(), request=requests_, placement=st.sampled_from(["pack", "spread"]))
def test_the_digests_loads_score_as_the_ledgers_do(ledger: NodeLedger, request: PodRequest, placement: str) -> None:
    request = PodRequest(request.containers, placement)  # type: ignore[arg-type]
    demand = PodDemand.of(request)
    others = [NodeLedger("empty", ledger.capacities), ledger.release(next(iter(ledger.pods), ""))]
    loads = [NodeDigest.of(n).load for n in (ledger, *others)]
    by_digest = placement_policy(request.placement).scores([*loads, None], demand.bandwidth)
    assert by_digest == scores([ledger, *others, None], demand.bandwidth, request.placement)


def pod(uid: str = "u-1", value: str = "runtime=50ms,period=100ms") -> dict[str, object]:
    return {
        "metadata": {"uid": uid, "annotations": {"rt.resource.example.com/container.c": value}},
        "spec": {"containers": [{"name": "c"}]},
    }


def test_prioritize_sees_a_ledger_change_at_once() -> None:
    empty = NodeLedger("n1", {0: CAP})
    cache = LedgerCache([empty])
    view = PodView.of(pod(), "pack")
    assert filter_nodes(view, ["n1"], cache).passed == ["n1"]
    assert prioritize_nodes(view, ["n1"], cache)[0]["Score"] > 0
    slot = (Slot(0, 80 * MS, 100 * MS, 100 * MS),)
    cache.put(empty.reserve(PodAllocation("other", "ns", "other", {"c": slot})))  # the node filled up meanwhile
    assert prioritize_nodes(view, ["n1"], cache) == [{"Host": "n1", "Score": 0}]
    assert filter_nodes(view, ["n1"], cache).passed == []
    cache.put(empty)  # and emptied again
    assert filter_nodes(view, ["n1"], cache).passed == ["n1"]


def test_the_cache_keeps_a_bounded_number_of_indexes_and_drops_them_on_a_relist() -> None:
    cache = LedgerCache([NodeLedger("n1", {0: CAP})])
    views = [PodView.of(pod(value=f"runtime={k + 1}ms,period=100ms"), "pack") for k in range(MAX_INDEXES + 1)]
    for view in views:
        filter_nodes(view, ["n1"], cache)
    made: list[str] = []

    def make(key: str) -> FitIndex:
        made.append(key)
        return FitIndex(PodDemand.of(PodRequest({"c": Reservation(MS, 10 * MS, 10 * MS)})), cache)

    cache.index(views[-1].key, lambda: make("last"))  # still kept
    cache.index(views[0].key, lambda: make("first"))  # the least used, dropped
    assert made == ["first"]
    cache.replace_all([NodeLedger("n1", {0: CAP})])
    cache.index(views[-1].key, lambda: make("after re-list"))
    assert made == ["first", "after re-list"]


def test_a_pod_whose_request_changed_is_decided_afresh() -> None:
    assert PodView.of(pod(value="runtime=1ms,period=10ms"), "pack").key != PodView.of(pod(), "pack").key
    assert PodView.of(pod(), "pack").key != PodView.of(pod(), "spread").key


def test_rejections_are_counted_by_a_bounded_reason_class() -> None:
    heavy = PodAllocation("x", "n", "x", {"c": (Slot(0, 90 * MS, 100 * MS, 100 * MS),)})
    cache = LedgerCache(
        [NodeLedger("full", {0: CAP}, {"x": heavy}), NodeLedger("none", {}), NodeLedger("down", {0: CAP}, ready=False)]
    )
    verdicts = filter_nodes(PodView.of(pod(), "pack"), ["full", "none", "down", "ghost"], cache)
    assert dict(verdicts.reasons) == {"insufficient_bandwidth": 1, "no_rt_cpus": 1, "not_ready": 1, "no_ledger": 1}
    assert reason_class("something new") == "other"


def test_a_constrained_neighbour_makes_the_fast_check_defer_to_the_exact_edf_test() -> None:
    # Bandwidth fits (4.5% + 84% <= 90%) but EDF does not: at t=50ms the demand is 46.5ms > 45ms.
    neighbour = (Slot(0, 4_500_000, 5 * MS, 100 * MS),)
    ledger = NodeLedger("n", {0: CAP}).reserve(PodAllocation("x", "ns", "x", {"c": neighbour}))
    request = PodRequest({"c": Reservation(42 * MS, 50 * MS, 50 * MS)})
    verdict = check_demand(NodeDigest.of(ledger), PodDemand.of(request))
    assert verdict is not None and verdict == check_pod(ledger, request)
    assert "insufficient deadline bandwidth" in verdict.reason


def test_a_not_ready_node_is_refused_with_its_agents_reason_when_it_gave_one() -> None:
    dra_mode = "node serves RT pods through DRA (DeviceClass rt.resource.example.com): ask for a ResourceClaim"
    cache = LedgerCache(
        [NodeLedger("dra", {0: CAP}, ready=False, reason=dra_mode), NodeLedger("down", {0: CAP}, ready=False)]
    )
    verdicts = filter_nodes(PodView.of(pod(), "pack"), ["dra", "down"], cache)
    assert verdicts.unresolvable == {
        "dra": f"node dra is not ready for real-time pods ({dra_mode})",
        "down": "node down is not ready for real-time pods (its NodeAllocationState is NotReady)",
    }


def test_the_quick_pass_holds_at_the_exact_residual_and_not_one_unit_below() -> None:
    request = PodRequest({"c": Reservation(10 * MS, 100 * MS, 100 * MS, 1)})
    bw = PodDemand.of(request).bandwidth
    # Two CPUs: the root domain has room on both nodes, a CPU only on the first.
    exact, short = NodeLedger("exact", {0: bw, 1: bw}), NodeLedger("short", {0: bw - 1, 1: bw - 1})
    view = PodView(request, key="u/pack/x")
    cache = LedgerCache([exact, short])
    assert NodeDigest.of(exact).surely_fits(PodDemand.of(request))
    assert not NodeDigest.of(short).surely_fits(PodDemand.of(request))
    assert filter_nodes(view, ["exact", "short"], cache).passed == ["exact"]
    assert [e["Score"] for e in prioritize_nodes(view, ["exact", "short"], cache)] == [10, 0]


def test_the_quick_refusal_counts_the_cpus_that_have_room() -> None:
    request = PodRequest({"c": Reservation(10 * MS, 100 * MS, 100 * MS, 3)})
    bw = request.containers["c"].bandwidth  # per CPU; every node's root domain has room for the pod
    cache = LedgerCache([NodeLedger(f"has{k}", {cpu: bw if cpu < k else bw - 1 for cpu in range(4)}) for k in range(4)])
    verdicts = filter_nodes(PodView(request, key="u/pack/x"), ["has0", "has1", "has2", "has3"], cache)
    assert verdicts.passed == ["has3"]
    assert verdicts.failed == {
        f"has{k}": reason_text(
            f"insufficient deadline bandwidth: container c needs 3 CPUs with 10.0% free, node has {k}"
        )
        for k in range(3)
    }
    assert verdicts.reasons == {"insufficient_bandwidth": 3}


def test_the_filter_sees_an_agent_fall_silent_and_come_back_at_once() -> None:
    now = [100.0]
    heartbeats = AgentHeartbeats("rt-dra", 10.0, clock=lambda: now[0])
    heartbeats.replace_all([lease("n1")])
    cache = LedgerCache([NodeLedger("n1", {0: CAP}), NodeLedger("n2", {0: CAP})])
    view = PodView.of(pod(), "pack")
    verdicts = filter_nodes(view, ["n1", "n2"], cache, heartbeats)
    assert verdicts.passed == ["n1"]
    assert "has no Lease" in verdicts.unresolvable["n2"]
    assert verdicts.reasons == {"agent_silent": 1}
    heartbeats.apply("ADDED", lease("n2"))
    assert filter_nodes(view, ["n1", "n2"], cache, heartbeats).passed == ["n1", "n2"]
    now[0] += 10.5  # n1 renewed at 100, n2 at 100 too: both past the bound ...
    renewed = lease("n2")
    renewed["spec"] = {**renewed["spec"], "renewTime": "2026-11-30T11:45:10.000000Z"}  # type: ignore[dict-item]
    heartbeats.apply("MODIFIED", renewed)  # ... but n2 renewed
    verdicts = filter_nodes(view, ["n1", "n2"], cache, heartbeats)
    assert verdicts.passed == ["n2"]
    assert "has not renewed its Lease" in verdicts.unresolvable["n1"]
    assert verdicts.reasons == {"agent_silent": 1}


def test_a_silent_node_without_room_is_refused_as_silent() -> None:
    heavy = PodAllocation("x", "n", "x", {"c": (Slot(0, 90 * MS, 100 * MS, 100 * MS),)})
    cache = LedgerCache([NodeLedger("full", {0: CAP}, {"x": heavy}), NodeLedger("n2", {0: CAP})])
    heartbeats = AgentHeartbeats("rt-dra", 10.0, clock=lambda: 100.0)
    heartbeats.replace_all([lease("n2")])
    verdicts = filter_nodes(PodView.of(pod(), "pack"), ["full", "n2"], cache, heartbeats)
    assert verdicts.passed == ["n2"]
    assert verdicts.failed == {}
    assert "has no Lease" in verdicts.unresolvable["full"]
    assert verdicts.reasons == {"agent_silent": 1}


@st.composite
def named_ledgers(draw: st.DrawFn) -> list[NodeLedger]:
    drawn = draw(st.lists(ledgers(), min_size=1, max_size=5))
    return [NodeLedger(f"n{i}", ledger.capacities, ledger.pods, ready=ledger.ready) for i, ledger in enumerate(drawn)]


nodes_ = st.sampled_from([f"n{i}" for i in range(4)])
changes = st.lists(
    st.one_of(
        st.tuples(st.just("put"), nodes_, ledgers()),
        st.tuples(st.just("remove"), nodes_, st.none()),
        st.tuples(st.just("filter"), st.none(), st.none()),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(start=named_ledgers(), steps=changes, request=requests_, placement=st.sampled_from(["pack", "spread"]))
def test_the_index_kept_current_decides_as_a_fresh_look_at_every_node(
    start: list[NodeLedger], steps: list[tuple[str, str | None, NodeLedger | None]], request: PodRequest, placement: str
) -> None:
    """Whatever ledgers come and go between filter calls, the filter decides each node as check_pod does."""
    request = PodRequest(request.containers, placement)  # type: ignore[arg-type]
    view, cache = PodView(request, key=demand_key(request)), LedgerCache(start)
    names_ = ["n0", "n1", "n2", "n3", "ghost"]
    for step, node, ledger in [*steps, ("filter", None, None)]:
        if step == "put" and node is not None and ledger is not None:
            cache.put(NodeLedger(node, ledger.capacities, ledger.pods, ready=ledger.ready))
        elif step == "remove" and node is not None:
            cache.remove(node)
        else:
            verdicts = filter_nodes(view, names_, cache)
            fresh = filter_nodes(view, names_, LedgerCache([d.ledger for d in cache.digests.values()]))
            assert verdicts == fresh
            for name in names_:
                held = cache.get(name)
                expected = None if held is None or not held.ready else check_pod(held, request)
                assert (name in verdicts.passed) == (held is not None and held.ready and expected is None)
                if expected is not None:
                    assert verdicts.failed[name] == reason_text(expected.reason)
            scored = prioritize_nodes(view, names_, cache)
            assert scored == prioritize_nodes(view, names_, LedgerCache([d.ledger for d in cache.digests.values()]))


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["renew", "delete", "wait", "relist"]), nodes_, st.floats(0, 8)), max_size=20
    )
)
def test_the_live_agents_set_agrees_with_silence_at_every_moment(steps: list[tuple[str, str, float]]) -> None:
    now = [100.0]
    heartbeats = AgentHeartbeats("rt-dra", 10.0, clock=lambda: now[0])
    heartbeats.replace_all([lease("n0"), lease("n1")])
    renewals = 0
    for step, node, wait in steps:
        if step == "renew":
            renewals += 1
            renewed = lease(node)
            renewed["spec"] = {**renewed["spec"], "renewTime": f"2026-11-30T11:46:{renewals:02d}.000000Z"}  # type: ignore[dict-item]
            heartbeats.apply("MODIFIED", renewed)
        elif step == "delete":
            heartbeats.apply("DELETED", lease(node))
        elif step == "relist":
            heartbeats.replace_all([lease(n) for n in ("n0", "n1", "n2", "n3") if n != node])
        else:
            now[0] += wait
        alive = set(heartbeats.alive_nodes(now[0]))
        assert alive == {n for n in ("n0", "n1", "n2", "n3") if heartbeats.silence(n, now[0]) is None}


def test_the_filter_counts_this_processs_binds_in_flight_and_requeues_if_one_writes_nothing() -> None:
    signals: list[str] = []
    cache = LedgerCache(
        [NodeLedger("busy", {0: CAP}), NodeLedger("idle", {0: CAP})], on_room=lambda: signals.append("room")
    )
    view = PodView.of(pod(), "pack")  # 50 ms every 100 ms
    cache.assume("busy", "other", CAP - 10 * MS * CAP // (100 * MS))  # leaves 10 % of the CPU's capacity
    verdicts = filter_nodes(view, ["busy", "idle"], cache)
    assert verdicts.passed == ["idle"]
    assert "binds in flight to node busy" in verdicts.failed["busy"]
    assert verdicts.reasons == {"in_flight": 1}
    cache.forget("busy", "other", stored=False)  # its write never happened: the room was there all along
    assert signals == ["room"]
    assert filter_nodes(view, ["busy", "idle"], cache).passed == ["busy", "idle"]


def test_a_bind_in_flight_that_was_written_sends_nobody_back() -> None:
    signals: list[str] = []
    cache = LedgerCache([NodeLedger("busy", {0: CAP})], on_room=lambda: signals.append("room"))
    cache.assume("busy", "other", CAP)
    assert filter_nodes(PodView.of(pod(), "pack"), ["busy"], cache).passed == []
    cache.forget("busy", "other", stored=True)
    cache.forget("busy", "other", stored=False)  # twice: nothing left to forget
    assert signals == []
    assert cache.assumed() == {}


@settings(max_examples=300, deadline=None)
@given(nodes=named_ledgers(), request=requests_, placement=st.sampled_from(["pack", "spread"]))
def test_pick_passes_the_first_node_prioritize_scores_highest(
    nodes: list[NodeLedger], request: PodRequest, placement: str
) -> None:
    request = PodRequest(request.containers, placement)  # type: ignore[arg-type]
    view, names_ = PodView(request, key="u/x"), [n.node for n in nodes]
    filtered = filter_nodes(view, names_, LedgerCache(nodes))
    picked = filter_nodes(view, names_, LedgerCache(nodes), pick=True)
    assert picked.failed == filtered.failed
    assert picked.unresolvable == filtered.unresolvable
    assert picked.reasons == filtered.reasons
    if not filtered.passed:
        assert picked.passed == []
        return
    scored = prioritize_nodes(view, filtered.passed, LedgerCache(nodes))
    assert picked.passed == [next(s["Host"] for s in scored if s["Score"] == 10)]


def test_pick_counts_binds_in_flight_as_load_pack_joins_them_and_spread_avoids_them() -> None:
    cache = LedgerCache([NodeLedger("a", {0: CAP}), NodeLedger("b", {0: CAP}), NodeLedger("c", {0: CAP})])
    cache.assume("b", "earlier", 10 * MS * CAP // (100 * MS))  # 10 %: the pod (50 %) still fits beside it
    nodes = ["a", "b", "c"]
    assert filter_nodes(PodView.of(pod(), "pack"), nodes, cache, pick=True).passed == ["b"]
    assert filter_nodes(PodView.of(pod(), "spread"), nodes, cache, pick=True).passed == ["a"]
    assert filter_nodes(PodView.of(pod(), "spread"), nodes, cache).passed == nodes  # the filter keeps all
