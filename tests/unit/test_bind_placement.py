"""Bind chooses CPUs by the pod's placement, exactly as the simulator measures it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from extender.bind import Binder, BindError
from extender.cache import LedgerCache
from rtdra import names
from rtdra.bandwidth import bandwidth
from rtdra.ledger import NodeLedger, PodAllocation, Slot
from rtdra.placement import placement_policy
from rtdra.request import PLACEMENTS

MS = 1_000_000
CAP = 943719


class OneLedger:
    """The store of one node's ledger: ``update`` applies the change (no API)."""

    def __init__(self, ledger: NodeLedger) -> None:
        self.ledger = ledger

    def update(self, node: str, change: Callable[[NodeLedger], NodeLedger], *, reuse_last: bool = False) -> NodeLedger:
        assert node == self.ledger.node
        self.ledger = change(self.ledger)
        return self.ledger


class Bindings:
    """``CoreV1Api`` as bind uses it: records the Binding bodies it is sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def create_namespaced_pod_binding(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        self.sent.append(body)
        return type("Reply", (), {"drain_conn": lambda self: None, "release_conn": lambda self: None})()


def half_full_node() -> NodeLedger:
    """CPU 0 holds 6 ms every 10 ms, CPU 1 holds 1 ms, CPUs 2 and 3 are empty."""
    ledger = NodeLedger("n1", dict.fromkeys(range(4), CAP))
    for cpu, ms in ((0, 6), (1, 1)):
        ledger = ledger.reserve(
            PodAllocation(f"old-{cpu}", "ns", "old", {"c": (Slot(cpu, ms * MS, 10 * MS, 10 * MS),)})
        )
    return ledger


def pending_pod(placement: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "uid-p",
            "resourceVersion": "7",
            "annotations": {f"{names.PREFIX}container.app": "runtime=2ms,period=10ms", names.PLACEMENT: placement},
        },
        "spec": {"containers": [{"name": "app"}]},
    }


def bound_cpus(placement: str) -> list[int]:
    store = OneLedger(half_full_node())
    binder = Binder(client.ApiClient(), store, pods=lambda uid: pending_pod(placement))  # type: ignore[arg-type]
    bindings = Bindings()
    binder.core = bindings  # type: ignore[assignment]
    binder.bind("ns", "p", "uid-p", "n1")
    annotation = json.loads(bindings.sent[0]["metadata"]["annotations"][names.ALLOCATION])
    cpus: list[int] = annotation["containers"]["app"]["cpus"]
    assert [s.cpu for s in store.ledger.pods["uid-p"].containers["app"]] == cpus
    return cpus


def test_bind_packs_a_pack_pod_onto_the_fullest_cpu_that_fits() -> None:
    assert bound_cpus("pack") == [0]


def test_bind_spreads_a_spread_pod_onto_the_emptiest_cpu() -> None:
    assert bound_cpus("spread") == [2]


def test_one_policy_per_placement_decides_cpus_and_node_score() -> None:
    assert {p: placement_policy(p).cpu_choice for p in PLACEMENTS} == {"pack": "best-fit", "spread": "worst-fit"}
    nodes = [(5, 10), (2, 10), (8, 10)]
    assert placement_policy("pack").scores(nodes, 1) == [4, 0, 10]
    assert placement_policy("spread").scores(nodes, 1) == [4, 10, 0]


def test_a_bind_in_flight_is_assumed_until_its_write_and_forgotten_after() -> None:
    seen: list[dict[str, int]] = []
    cache = LedgerCache([half_full_node()])

    class Watching(OneLedger):
        def update(
            self, node: str, change: Callable[[NodeLedger], NodeLedger], *, reuse_last: bool = False
        ) -> NodeLedger:
            seen.append(cache.assumed())  # what the filter sees while the write is in flight
            return super().update(node, change, reuse_last=reuse_last)

    binder = Binder(client.ApiClient(), Watching(half_full_node()), cache=cache, pods=lambda uid: pending_pod("pack"))  # type: ignore[arg-type]
    binder.core = Bindings()  # type: ignore[assignment]
    binder.bind("ns", "p", "uid-p", "n1")
    assert seen == [{"n1": bandwidth(2 * MS, 10 * MS)}]
    assert cache.assumed() == {}
    assert "uid-p" in (cache.get("n1") or half_full_node()).pods


def test_a_refused_bind_is_forgotten_too() -> None:
    cache = LedgerCache([half_full_node()])
    full = NodeLedger("n1", dict.fromkeys(range(4), MS // 1000))  # no CPU has room for 2 ms/10 ms
    binder = Binder(client.ApiClient(), OneLedger(full), cache=cache, pods=lambda uid: pending_pod("pack"))  # type: ignore[arg-type]
    binder.core = Bindings()  # type: ignore[assignment]
    with pytest.raises(BindError):
        binder.bind("ns", "p", "uid-p", "n1")
    assert cache.assumed() == {}
