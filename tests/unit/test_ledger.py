"""The node ledger never promises more than a CPU gives, and round-trips through the NAS shape."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtdra import names
from rtdra.bandwidth import BW_UNIT
from rtdra.edf import edf_schedulable
from rtdra.ledger import (
    Conflict,
    LedgerError,
    NodeLedger,
    Overcommit,
    PodAllocation,
    Slot,
    release_if_held,
    released_annotation,
    released_reservation,
)

MS = 1_000_000
CAP = 943719  # 95% RT limit less a 50ms/1s fair server, as measured on a 6.12+ kernel


def ledger(cpus: int = 4, **kw: object) -> NodeLedger:
    return NodeLedger(node="n1", capacities=dict.fromkeys(range(cpus), CAP), **kw)  # type: ignore[arg-type]


def alloc(uid: str, *slots: Slot, container: str = "c") -> PodAllocation:
    return PodAllocation(uid=uid, namespace="ns", name=f"pod-{uid}", containers={container: slots})


def test_reserve_is_idempotent_and_release_restores() -> None:
    base = ledger()
    a = alloc("u1", Slot(0, 2 * MS, 10 * MS, 10 * MS), Slot(1, 2 * MS, 10 * MS, 10 * MS))
    once = base.reserve(a)
    assert once.reserve(a) is once
    assert once.used(0) == once.used(1) == (2 * MS << 20) // (10 * MS)
    assert once.release("u1").pods == {}
    assert once.release("u1").release("u1").pods == {}


def test_a_conditional_release_frees_only_the_reservation_decided_on() -> None:
    slot = Slot(0, 2 * MS, 10 * MS, 10 * MS)
    old = PodAllocation("u1", "ns", "p1", {"c": (slot,)}, reserved_at="2026-12-01T06:00:00Z")
    newer = PodAllocation("u1", "ns", "p1", {"c": (slot,)}, reserved_at="2026-12-01T06:01:00Z")
    other = PodAllocation("u2", "ns", "p2", {"c": (Slot(1, 2 * MS, 10 * MS, 10 * MS),)}, reserved_at=old.reserved_at)
    held = ledger().reserve(newer).reserve(other)
    assert release_if_held(held, {"u1": old.reserved_at}) is held  # the pod was reserved again since: kept
    assert set(release_if_held(held, {"u1": newer.reserved_at, "gone": "x"}).pods) == {"u2"}


def test_the_released_mark_names_a_node_and_a_reservation_time_or_nothing() -> None:
    def pod(value: str) -> dict[str, object]:
        return {"metadata": {"annotations": {names.RELEASED: value}}}

    assert released_reservation(pod(released_annotation("n1", "2026-12-01T06:00:00Z"))) == (
        "n1",
        "2026-12-01T06:00:00Z",
    )
    for forged in ("", "not json", "[]", '{"node": 1, "reservedAt": "x"}', '{"node": "n1"}'):
        assert released_reservation(pod(forged)) is None
    assert released_reservation({"metadata": {}}) is None


def test_a_different_reservation_for_the_same_pod_is_a_conflict() -> None:
    once = ledger().reserve(alloc("u1", Slot(0, 2 * MS, 10 * MS, 10 * MS)))
    with pytest.raises(Conflict, match="pod ns/pod-u1 already holds a different reservation on n1"):
        once.reserve(alloc("u1", Slot(1, 2 * MS, 10 * MS, 10 * MS)))


def test_overcommit_is_refused_with_the_numbers() -> None:
    full = ledger().reserve(alloc("u1", Slot(0, 8 * MS, 10 * MS, 10 * MS)))
    with pytest.raises(Overcommit, match=r"container c: CPU 0 on n1 has 10.0% free, needs 20.0%"):
        full.reserve(alloc("u2", Slot(0, 2 * MS, 10 * MS, 10 * MS)))


def test_exactly_full_fits_and_one_unit_more_does_not() -> None:
    # runtime chosen so the kernel's bandwidth is exactly the capacity
    period = BW_UNIT * 1000
    exact = ledger(1).reserve(alloc("u1", Slot(0, CAP * 1000, period, period)))
    assert exact.residual(0) == 0
    with pytest.raises(Overcommit):
        ledger(1).reserve(alloc("u1", Slot(0, CAP * 1000 + 1000, period, period)))


def test_constrained_deadlines_are_checked_exactly() -> None:
    # 40% + 40% fits by bandwidth, but both need 4ms within their 5ms deadline.
    first = ledger(1).reserve(alloc("u1", Slot(0, 4 * MS, 5 * MS, 10 * MS)))
    with pytest.raises(Overcommit):
        first.reserve(alloc("u2", Slot(0, 4 * MS, 5 * MS, 10 * MS)))


def test_a_containers_cpus_must_be_distinct_and_allocatable() -> None:
    with pytest.raises(LedgerError, match="must be distinct"):
        ledger().reserve(alloc("u1", Slot(0, MS, 10 * MS, 10 * MS), Slot(0, MS, 10 * MS, 10 * MS)))
    with pytest.raises(LedgerError, match="CPU 9 is not allocatable on n1"):
        ledger().reserve(alloc("u1", Slot(9, MS, 10 * MS, 10 * MS)))


def test_root_domain_capacity_limits_the_node_as_a_whole() -> None:
    small = ledger(2, root_domain_capacity=CAP)  # e.g. another DL task holds the rest
    one = small.reserve(alloc("u1", Slot(0, 6 * MS, 10 * MS, 10 * MS)))
    with pytest.raises(Overcommit, match="root domain"):
        one.reserve(alloc("u2", Slot(1, 6 * MS, 10 * MS, 10 * MS)))


slots = st.builds(
    lambda cpu, period_ms, share, dshare: Slot(
        cpu,
        max(1024, period_ms * MS * share // 100),
        max(1024, period_ms * MS * share // 100, period_ms * MS * dshare // 100),
        period_ms * MS,
    ),
    st.integers(0, 3),
    st.sampled_from([1, 2, 5, 10]),
    st.integers(1, 70),
    st.integers(1, 100),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 9), st.lists(slots, min_size=1, max_size=3)),
        st.tuples(st.just("release"), st.integers(0, 9), st.just([])),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_no_sequence_of_reserve_and_release_exceeds_any_cpu(ops: list[tuple[str, int, list[Slot]]]) -> None:
    state = ledger()
    for op, uid, pod_slots in ops:
        if op == "release":
            state = state.release(str(uid))
            continue
        containers = {f"c{i}": (s,) for i, s in enumerate(pod_slots)}
        with contextlib.suppress(LedgerError):
            state = state.reserve(PodAllocation(str(uid), "ns", "p", containers))
        for cpu in state.cpus:
            assert state.used(cpu) <= state.capacities[cpu]
            assert edf_schedulable(state.slots_on(cpu), CAP)
        assert state.total_used <= state.root_capacity
    assert NodeLedger.from_nas(state.to_nas()) == state


def test_nas_shape_is_the_seeds_with_nanoseconds() -> None:
    state = ledger(2, resource_version="42").reserve(alloc("u1", Slot(1, 2 * MS, 5 * MS, 10 * MS), container="ctr0"))
    nas = state.to_nas("rt-dra")
    assert nas["apiVersion"] == "nas.rt.resource.example.com/v1alpha1"
    assert nas["kind"] == "NodeAllocationState"
    assert nas["metadata"] == {"name": "n1", "namespace": "rt-dra", "resourceVersion": "42"}
    assert nas["spec"]["allocatableCpuset"] == [
        {"rtcpu": {"id": 0, "capacity": CAP}},
        {"rtcpu": {"id": 1, "capacity": CAP}},
    ]
    assert nas["spec"]["allocatedClaims"] == {
        "u1": {
            "namespace": "ns",
            "name": "pod-u1",
            "reservedAt": "",
            "containers": {
                "ctr0": {
                    "rtcpu": {"cpuset": [{"id": 1, "runtimeNs": 2 * MS, "deadlineNs": 5 * MS, "periodNs": 10 * MS}]}
                }
            },
        }
    }
    assert nas["status"] == "Ready"
    # 20% of one CPU out of 2 x 90% of deadline capacity
    assert nas["summary"] == {"cpus": 2, "pods": 1, "reserved": "11.1%"}
    assert NodeLedger.from_nas(nas) == state


def test_not_ready_and_prepared_records_survive_the_round_trip() -> None:
    state = ledger(1, ready=False, prepared={"u1": {"containers": {"c": {"state": "applied"}}}})
    again = NodeLedger.from_nas(state.to_nas())
    assert again.ready is False
    assert again.prepared == {"u1": {"containers": {"c": {"state": "applied"}}}}
    # releasing the reservation leaves the agent's record: only the agent knows when the kernel is clean
    assert again.release("u1").prepared == {"u1": {"containers": {"c": {"state": "applied"}}}}
