"""The extender's watches: the configured timeout is used, and the pods the filter turned away are requeued
only once the filter's cache shows the room - recorded by the filter itself, not taken from a pod watch that
may lag - and no other pod is touched."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from extender import pods as pods_module
from extender.app import create_app
from extender.cache import LedgerCache, WatchedLedgerCache, more_room
from extender.config import ExtenderConfig
from extender.reconcile import Reconciler
from extender.requeue import REQUEUE, Requeuer
from rtdra import names
from rtdra.ledger import NodeLedger, PodAllocation, Slot
from rtdra.placement import NodeDigest
from rtdra.store import NasEvent, NasStore

MS = 1_000_000


class Pods:
    """``CoreV1Api`` as the pod watch and the reconciler use it."""

    def __init__(self) -> None:
        self.watched = threading.Event()
        self.watch_kwargs: dict[str, Any] = {}
        self.patched: list[str] = []
        self.stamps: list[str] = []
        self.on_patch: Callable[[], None] = lambda: None
        #: What a list of unscheduled pods returns (the API's field selector already applied).
        self.unscheduled: list[dict[str, Any]] = []
        self.list_kwargs: dict[str, Any] = {}

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            self.watch_kwargs = kwargs
            self.watched.set()
            raise ApiException(status=500, reason="test: no more")
        self.list_kwargs = kwargs
        items = self.unscheduled if kwargs.get("field_selector") == "spec.nodeName=" else []
        return type("Reply", (), {"data": json.dumps({"metadata": {"resourceVersion": "5"}, "items": items})})()

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **_: Any) -> None:
        self.on_patch()
        self.patched.append(f"{namespace}/{name}")
        self.stamps.append(body["metadata"]["annotations"][REQUEUE])


def test_the_reconcilers_pod_watch_uses_the_configured_watch_timeout_and_lists_only_unbound_pods(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = Pods()
    monkeypatch.setattr(pods_module.client, "CoreV1Api", lambda api: fake)
    reconciler = Reconciler(
        client.ApiClient(),
        None,
        interval_seconds=3600,
        watch_timeout_seconds=7,
        request_timeout=2.0,  # type: ignore[arg-type]
    ).start()
    try:
        assert fake.watched.wait(10)
    finally:
        reconciler.stop()
    assert fake.watch_kwargs["timeout_seconds"] == 7
    assert fake.watch_kwargs["_request_timeout"] == 7 + 2.0
    # The list takes the unbound pods; the watch follows every pod (deletions of bound ones matter).
    assert fake.list_kwargs["field_selector"] == "spec.nodeName=" and fake.list_kwargs["_request_timeout"] == 2.0
    assert "field_selector" not in fake.watch_kwargs


class OneNode:
    """The NAS store of one node (no API)."""

    def __init__(self, ledger: NodeLedger) -> None:
        self.ledger = ledger

    def get(self, node: str) -> NodeLedger | None:
        return self.ledger

    def update(self, node: str, change: Callable[[NodeLedger], NodeLedger]) -> NodeLedger:
        self.ledger = change(self.ledger)
        self.ledger = NodeLedger(self.ledger.node, self.ledger.capacities, self.ledger.pods, resource_version="11")
        return self.ledger


def pod(name: str, uid: str, *, node: str = "", allocated_on: str = "") -> dict[str, Any]:
    annotations = {f"{names.PREFIX}container.app": "runtime=6ms,period=10ms"}
    if allocated_on:
        annotations[names.ALLOCATION] = json.dumps({"node": allocated_on})
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": "9", "annotations": annotations},
        "spec": {"nodeName": node, "containers": [{"name": "app"}]},
    }


def held_ledger() -> NodeLedger:
    return NodeLedger("n1", {0: 943719}, resource_version="10").reserve(
        PodAllocation("uid-big", "ns", "big", {"app": (Slot(0, 6 * MS, 10 * MS, 10 * MS),)})
    )


def requeuer(fake: Pods) -> Requeuer:
    r = Requeuer(client.ApiClient())
    r.core = fake  # type: ignore[assignment]
    return r


def rt_filter_args(name: str, uid: str, nodes: list[str]) -> dict[str, Any]:
    """ExtenderArgs as kube-scheduler sends them (node-cache-capable: names only) for an RT pod."""
    return {"Pod": pod(name, uid), "Nodes": None, "NodeNames": nodes}


def test_a_release_reaches_the_filters_cache_before_the_turned_away_pod_is_requeued() -> None:
    """The touch comes after the filter can see the room, and reaches a pod no pod watch has seen yet.

    The race this pins (``test_chain`` left a pod pending beside free room): the
    scheduler filtered the new pod on the old ledger, and the release's requeue
    took its pods from the extender's pod watch, which had not yet seen that pod.
    The filter records the pod it turns away before it answers.
    """
    held = held_ledger()
    fake = Pods()
    r = requeuer(fake)
    seen_at_requeue: list[set[str]] = []
    cache = LedgerCache([held])
    fake.on_patch = lambda: seen_at_requeue.append(set(cache.get("n1").pods))  # type: ignore[union-attr]
    app = create_app(ExtenderConfig(), cache=cache, requeuer=r).test_client()
    reply = app.post("/filter", json=rt_filter_args("waiting", "uid-waiting", ["n1"])).get_json()
    assert reply["NodeNames"] == [] and "n1" in reply["FailedNodes"]  # 6 ms of 10 ms held: 6 ms more do not fit
    assert r.waiting() == {"uid-waiting": ("ns", "waiting")}
    cache.on_room = lambda: (r.signal(), r.requeue_once())  # synchronously, where production signals a thread
    reconciler = Reconciler(client.ApiClient(), OneNode(held), on_stored=cache.put)  # type: ignore[arg-type]

    reconciler._on_pod("DELETED", pod("big", "uid-big", node="n1", allocated_on="n1"))

    assert fake.patched == ["ns/waiting"]
    assert seen_at_requeue == [set()]  # the filter already saw the room the requeued pod is sent to
    assert r.waiting() == {}
    assert fake.list_kwargs == {}  # nothing listed: the filter said which pods


def test_a_filter_that_read_the_ledgers_before_a_room_signal_asks_for_another_round() -> None:
    """Room signalled while the filter decided on the old ledgers: the round it started may have gone
    without the pod, so recording the pod asks for one more."""
    r = requeuer(Pods())
    before = r.rooms
    r.turned_away("uid-a", "ns", "a", rooms_before=before)
    assert not r._wanted.is_set()  # no room came meanwhile: wait for the next one
    r.signal()
    r._wanted.clear()  # that round ran (without uid-b, recorded only now)
    r.turned_away("uid-b", "ns", "b", rooms_before=before)
    assert r._wanted.is_set()


def test_only_the_turned_away_pods_are_touched_each_once_per_room_and_a_pod_that_fits_is_dropped() -> None:
    fake = Pods()
    r = requeuer(fake)
    app = create_app(ExtenderConfig(), cache=LedgerCache([held_ledger()]), requeuer=r).test_client()
    app.post("/filter", json=rt_filter_args("a", "uid-a", ["n1"]))
    app.post("/filter", json=rt_filter_args("b", "uid-b", ["n1"]))
    plain = {
        "Pod": {"metadata": {"name": "p", "namespace": "ns", "uid": "uid-p"}, "spec": {"containers": [{"name": "c"}]}},
        "NodeNames": ["n1"],
    }
    app.post("/filter", json=plain)  # no real-time request: nothing to requeue
    assert r.waiting() == {"uid-a": ("ns", "a"), "uid-b": ("ns", "b")}
    r.passed("uid-b")  # tried again meanwhile, and a node had room
    assert r.requeue_once() == 1
    assert fake.patched == ["ns/a"]
    assert r.requeue_once() == 0  # touched: it is recorded again only if the filter turns it away again
    app.post("/filter", json=rt_filter_args("a", "uid-a", ["n1"]))
    assert r.requeue_once() == 1
    assert len(set(fake.stamps)) == 2  # each round is a change the scheduler sees
    assert all(stamp.endswith(r._origin) for stamp in fake.stamps)


def test_at_start_the_requeuer_adopts_only_the_pods_kube_scheduler_marked_unschedulable() -> None:
    fake = Pods()
    unschedulable = pod("a", "uid-a")
    unschedulable["status"] = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}
    queued = pod("b", "uid-b")  # not tried yet: in the scheduler's active queue
    deleting = pod("c", "uid-c")
    deleting["metadata"]["deletionTimestamp"] = "2026-11-30T12:00:00Z"
    deleting["status"] = unschedulable["status"]
    fake.unscheduled = [unschedulable, queued, deleting]
    r = requeuer(fake)
    assert r.adopt_unschedulable() == 1
    assert r.waiting() == {"uid-a": ("ns", "a")}


def test_a_process_that_learns_of_a_release_from_its_watch_requeues_too() -> None:
    """With several workers or replicas each cache requeues after taking the room in: the last touch then
    comes after every cache has it."""
    held = held_ledger()
    rooms: list[str] = []
    cache = WatchedLedgerCache(NasStore(client.ApiClient()), on_room=lambda: rooms.append("room"))  # never started
    cache.replace_all([held])
    rooms.clear()
    more = NodeLedger("n1", {0: 943719}, resource_version="12").reserve(
        PodAllocation("uid-other", "ns", "other", {"app": (Slot(0, 1 * MS, 10 * MS, 10 * MS),)})
    )
    cache._apply(NasEvent("MODIFIED", more.release("uid-other").release("uid-big"), "12"))
    assert rooms == ["room"]
    cache._apply(NasEvent("MODIFIED", more, "13"))  # a reservation only: no room
    assert rooms == ["room"]


def digest(ledger: NodeLedger) -> NodeDigest:
    return NodeDigest.of(ledger)


def test_room_is_a_release_a_ledger_turned_ready_more_capacity_or_a_new_ready_ledger() -> None:
    held = held_ledger()
    released = held.release("uid-big")
    assert more_room(digest(held), digest(released))
    assert not more_room(digest(released), digest(held))
    assert more_room(None, digest(released))
    assert not more_room(None, digest(NodeLedger("n1", {0: 943719}, ready=False)))
    assert more_room(digest(NodeLedger("n1", {0: 943719}, ready=False)), digest(NodeLedger("n1", {0: 943719})))
    assert more_room(digest(NodeLedger("n1", {0: 900000})), digest(NodeLedger("n1", {0: 943719})))
    assert not more_room(digest(NodeLedger("n1", {0: 943719})), digest(NodeLedger("n1", {0: 943719})))


def test_a_signal_makes_the_thread_requeue() -> None:
    fake = Pods()
    touched = threading.Event()
    fake.on_patch = touched.set
    r = requeuer(fake)
    r.turned_away("uid-a", "ns", "a", rooms_before=r.rooms)
    r.start()
    try:
        assert not touched.wait(0.2)  # nothing before a signal
        r.signal()
        assert touched.wait(10)
    finally:
        r.stop()


def test_the_cache_never_goes_back_to_an_older_version_of_a_ledger() -> None:
    cache = LedgerCache()
    cache.put(NodeLedger("n1", {0: 1}, resource_version="11"))
    cache.put(NodeLedger("n1", {0: 2}, resource_version="10"))  # the watch, late
    assert cache.get("n1") == NodeLedger("n1", {0: 1}, resource_version="11")
    cache.put(NodeLedger("n1", {0: 3}, resource_version="12"))
    assert cache.get("n1") == NodeLedger("n1", {0: 3}, resource_version="12")


class AllPods:
    """``CoreV1Api`` for the reconciler's periodic pass: a list of every pod and direct reads, counted."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = {p["metadata"]["name"]: p for p in pods}
        self.lists = 0
        self.reads: list[str] = []

    def list_pod_for_all_namespaces(self, **_: Any) -> Any:
        self.lists += 1
        body = {"metadata": {"resourceVersion": "5"}, "items": list(self.pods.values())}
        return type("Reply", (), {"data": json.dumps(body)})()

    def read_namespaced_pod(self, name: str, namespace: str, **_: Any) -> Any:
        self.reads.append(name)
        if name not in self.pods:
            raise ApiException(status=404, reason="Not Found")
        return type("Reply", (), {"data": json.dumps(self.pods[name])})()


class Ledgers(OneNode):
    def list(self) -> tuple[list[NodeLedger], str]:
        return [self.ledger], "12"


def finished(p: dict[str, Any]) -> dict[str, Any]:
    return {**p, "status": {"phase": "Succeeded"}}


def test_between_full_passes_the_reconciler_lists_no_pod_and_releases_only_what_a_read_confirms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slot = (Slot(0, 1 * MS, 10 * MS, 10 * MS),)
    ledger = NodeLedger("n1", {0: 943719}, resource_version="10")
    for name in ("a", "b", "c"):
        ledger = ledger.reserve(PodAllocation(f"uid-{name}", "ns", name, {"app": slot}))
    bound = {n: pod(n, f"uid-{n}", node="n1", allocated_on="n1") for n in ("a", "b", "c")}
    api = AllPods(list(bound.values()))
    monkeypatch.setattr(pods_module.client, "CoreV1Api", lambda _api: api)
    watch = pods_module.PodWatch(client.ApiClient())
    store = Ledgers(ledger)
    reconciler = Reconciler(client.ApiClient(), store, pods=watch, full_every=3)  # type: ignore[arg-type]
    reconciler.core = api  # type: ignore[assignment]
    assert not watch.complete()

    assert reconciler.reconcile_once() == {}  # the first pass lists every pod, and fills the watch's index
    assert (api.lists, api.reads, watch.complete()) == (1, [], True)
    assert reconciler.reconcile_once() == {}  # nothing looks stale: no list, no read
    assert (api.lists, api.reads) == (1, [])

    # The watch saw b and c finish; the API says b still runs (the index is behind) and c finished.
    watch.track(finished(bound["b"]))
    watch.track(finished(bound["c"]))
    api.pods["c"] = finished(bound["c"])
    assert reconciler.reconcile_once() == {"n1": ["uid-c"]}
    assert (api.lists, sorted(api.reads)) == (1, ["b", "c"])
    assert set(store.ledger.pods) == {"uid-a", "uid-b"}

    # Every third pass lists again, and a list of the watch's own (unbound pods only) makes the next one full.
    api.reads.clear()
    assert reconciler.reconcile_once() == {}
    assert api.lists == 2
    watch._replace_all([])
    assert not watch.complete()
    reconciler.reconcile_once()
    assert api.lists == 3 and watch.complete()
