"""The extender's watches: the configured timeout is used, and a release is visible before pods are requeued."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from extender import pods as pods_module
from extender.cache import LedgerCache
from extender.pods import PodWatch
from extender.reconcile import Reconciler
from rtdra import names
from rtdra.ledger import NodeLedger, PodAllocation, Slot

MS = 1_000_000


class Pods:
    """``CoreV1Api`` as the pod watch and the reconciler use it."""

    def __init__(self) -> None:
        self.watched = threading.Event()
        self.watch_kwargs: dict[str, Any] = {}
        self.patched: list[str] = []
        self.on_patch: Callable[[], None] = lambda: None

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            self.watch_kwargs = kwargs
            self.watched.set()
            raise ApiException(status=500, reason="test: no more")
        return type("Reply", (), {"data": json.dumps({"metadata": {"resourceVersion": "5"}, "items": []})})()

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **_: Any) -> None:
        self.on_patch()
        self.patched.append(f"{namespace}/{name}")


def test_the_reconcilers_pod_watch_uses_the_configured_watch_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_a_release_reaches_the_filters_cache_before_pending_pods_are_requeued() -> None:
    held = NodeLedger("n1", {0: 943719}, resource_version="10").reserve(
        PodAllocation("uid-big", "ns", "big", {"app": (Slot(0, 6 * MS, 10 * MS, 10 * MS),)})
    )
    cache = LedgerCache([held])
    watch = PodWatch(client.ApiClient())
    watch.track(pod("waiting", "uid-waiting"))
    fake = Pods()
    seen_at_requeue: list[set[str]] = []
    fake.on_patch = lambda: seen_at_requeue.append(set(cache.get("n1").pods))  # type: ignore[union-attr]
    reconciler = Reconciler(client.ApiClient(), OneNode(held), pods=watch, on_stored=cache.put)  # type: ignore[arg-type]
    reconciler.core = fake  # type: ignore[assignment]

    reconciler._on_pod("DELETED", pod("big", "uid-big", node="n1", allocated_on="n1"))

    assert fake.patched == ["ns/waiting"]
    assert seen_at_requeue == [set()]  # the filter already saw the room the requeued pod is sent to


def test_the_cache_never_goes_back_to_an_older_version_of_a_ledger() -> None:
    cache = LedgerCache()
    cache.put(NodeLedger("n1", {0: 1}, resource_version="11"))
    cache.put(NodeLedger("n1", {0: 2}, resource_version="10"))  # the watch, late
    assert cache.get("n1") == NodeLedger("n1", {0: 1}, resource_version="11")
    cache.put(NodeLedger("n1", {0: 3}, resource_version="12"))
    assert cache.get("n1") == NodeLedger("n1", {0: 3}, resource_version="12")
