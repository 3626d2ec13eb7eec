"""When the API server does not answer (urllib3's errors, not ``ApiException``), every caller gets a ``StoreError``.

While kube-apiserver restarts, the kubernetes client raises
``MaxRetryError``, ``ProtocolError`` or ``ReadTimeoutError``. Bind must still
answer kube-scheduler with an ``Error`` (not a 500) and release what it
reserved; a requeue must go on past the pod it could not touch.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError

from extender.app import create_app
from extender.bind import Binder
from extender.cache import LedgerCache
from extender.claims import ClaimParametersCache, ClaimParametersUnavailable
from extender.config import ExtenderConfig
from extender.reconcile import Reconciler
from extender.requeue import Requeuer
from rtdra import names
from rtdra.kube import StoreError
from rtdra.ledger import NodeLedger
from rtdra.store import NasStore

CAP = 943719
URL = "/api/v1/namespaces/ns/pods/p/binding"


def unreachable() -> MaxRetryError:
    return MaxRetryError(None, URL, reason=ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))  # type: ignore[arg-type]


class NasObjects:
    """``CustomObjectsApi`` as the NAS store uses it, holding one node's object; ``down`` makes calls fail."""

    def __init__(self, ledger: NodeLedger) -> None:
        self.obj = ledger.to_nas(names.DEFAULT_NAMESPACE)
        self.obj["metadata"]["resourceVersion"] = "1"
        self.down: dict[str, Exception] = {}

    def get_namespaced_custom_object(self, *_: Any, **__: Any) -> Any:
        if "get" in self.down:
            raise self.down["get"]
        return copy.deepcopy(self.obj)

    def replace_namespaced_custom_object(self, *args: Any, **_: Any) -> Any:
        if "replace" in self.down:
            raise self.down["replace"]
        body = copy.deepcopy(args[5])
        body["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
        self.obj = body
        return copy.deepcopy(body)

    def pods(self) -> set[str]:
        return set(NodeLedger.from_nas(self.obj).pods)


class Pods:
    """``CoreV1Api`` as bind uses it while the API server is gone: every call fails in transport."""

    def __init__(self) -> None:
        self.bindings: list[dict[str, Any]] = []
        self.on_binding: Callable[[], object] = lambda: None

    def create_namespaced_pod_binding(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        self.bindings.append(body)
        self.on_binding()
        raise unreachable()

    def read_namespaced_pod(self, *_: Any, **__: Any) -> Any:
        raise ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))


def pending_pod() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "uid-p",
            "resourceVersion": "7",
            "annotations": {f"{names.PREFIX}container.app": "runtime=2ms,period=10ms"},
        },
        "spec": {"containers": [{"name": "app"}]},
    }


def binder_on(objects: NasObjects) -> tuple[Binder, Pods]:
    store = NasStore(client.ApiClient())
    store._objects = objects  # type: ignore[assignment]
    binder = Binder(client.ApiClient(), store, pods=lambda uid: pending_pod())
    pods = Pods()
    binder.core = pods  # type: ignore[assignment]
    return binder, pods


def bind(binder: Binder) -> tuple[int, dict[str, Any]]:
    app = create_app(ExtenderConfig(), cache=LedgerCache(), binder=binder).test_client()
    args = {"PodName": "p", "PodNamespace": "ns", "PodUID": "uid-p", "Node": "n1"}
    reply = app.post("/bind", data=json.dumps(args), content_type="application/json")
    return reply.status_code, reply.get_json(silent=True) or {}


def test_bind_answers_an_error_and_releases_its_reservation_when_the_binding_gets_no_answer() -> None:
    objects = NasObjects(NodeLedger("n1", {0: CAP, 1: CAP}, resource_version="1"))
    binder, pods = binder_on(objects)

    status, reply = bind(binder)

    assert status == 200
    assert "binding pod ns/p to n1 failed" in reply["Error"]
    assert "did not answer (MaxRetryError" in reply["Error"]
    assert len(pods.bindings) == 1  # it was reserved and the Binding was tried ...
    assert objects.pods() == set()  # ... and the reservation is released at once, not after the grace period


def test_bind_answers_an_error_when_the_ledger_cannot_be_read() -> None:
    objects = NasObjects(NodeLedger("n1", {0: CAP}, resource_version="1"))
    objects.down["get"] = ReadTimeoutError(None, URL, "Read timed out. (read timeout=10.0)")  # type: ignore[arg-type]
    binder, pods = binder_on(objects)

    status, reply = bind(binder)

    assert status == 200
    assert reply["Error"].startswith("node n1: could not reserve: reading NodeAllocationState")
    assert "did not answer (ReadTimeoutError" in reply["Error"]
    assert pods.bindings == []


def test_bind_answers_an_error_when_its_rollback_gets_no_answer_either() -> None:
    objects = NasObjects(NodeLedger("n1", {0: CAP}, resource_version="1"))
    binder, pods = binder_on(objects)
    pods.on_binding = lambda: objects.down.setdefault("replace", unreachable())

    status, reply = bind(binder)

    assert status == 200
    assert "binding pod ns/p to n1 failed" in reply["Error"]
    assert objects.pods() == {"uid-p"}  # left for the reconciler's grace period


@pytest.mark.parametrize(
    "failure",
    [unreachable(), ProtocolError("Connection aborted."), ReadTimeoutError(None, URL, "Read timed out.")],  # type: ignore[arg-type]
)
def test_the_store_turns_a_transport_failure_into_a_store_error(failure: Exception) -> None:
    objects = NasObjects(NodeLedger("n1", {0: CAP}, resource_version="1"))
    objects.down["get"] = failure
    store = NasStore(client.ApiClient())
    store._objects = objects  # type: ignore[assignment]
    with pytest.raises(StoreError) as raised:
        store.update("n1", lambda ledger: ledger)
    assert raised.value.status == 0
    assert type(failure).__name__ in str(raised.value)


class Requeues:
    """``CoreV1Api`` as requeue uses it: the first patch gets no answer, the rest land."""

    def __init__(self) -> None:
        self.tried: list[str] = []
        self.patched: list[str] = []

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **_: Any) -> None:
        self.tried.append(name)
        if len(self.tried) == 1:
            raise unreachable()
        self.patched.append(name)


def pending(name: str) -> dict[str, Any]:
    pod = pending_pod()
    pod["metadata"] = {**pod["metadata"], "name": name, "uid": f"uid-{name}"}
    return pod


def test_requeue_goes_on_past_a_pod_it_could_not_reach() -> None:
    requeuer = Requeuer(client.ApiClient())
    fake = Requeues()
    requeuer.core = fake  # type: ignore[assignment]
    for name in ("a", "b", "c"):
        requeuer.turned_away(f"uid-{name}", "ns", name, rooms_before=requeuer.rooms)

    touched = requeuer.requeue_once()

    assert len(fake.tried) == 3
    assert touched == 2
    assert sorted(fake.patched + fake.tried[:1]) == ["a", "b", "c"]
    # The one it could not reach waits for the next round.
    assert list(requeuer.waiting()) == [f"uid-{fake.tried[0]}"]


class ClaimObjects:
    """``CustomObjectsApi`` as the RtClaimParameters cache reads one on a miss: no answer, or a 404."""

    def __init__(self, failure: Exception) -> None:
        self.failure = failure

    def get_namespaced_custom_object(self, *_: Any, **__: Any) -> Any:
        raise self.failure


def test_a_claim_parameters_read_without_an_answer_is_unavailable_and_a_404_is_none() -> None:
    cache = ClaimParametersCache(client.ApiClient())
    cache._objects = ClaimObjects(unreachable())  # type: ignore[assignment]
    with pytest.raises(ClaimParametersUnavailable, match=r"team-a/two-cpus: the API server did not answer \(MaxRetry"):
        cache("team-a", "two-cpus")
    cache._objects = ClaimObjects(ApiException(status=404, reason="Not Found"))  # type: ignore[assignment]
    assert cache("team-a", "two-cpus") is None


class NoPods:
    """``CoreV1Api`` whose pod list gets no answer."""

    def list_pod_for_all_namespaces(self, **_: Any) -> Any:
        raise unreachable()


def test_the_reconcilers_pass_and_the_requeue_list_fail_with_a_store_error_when_the_api_does_not_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    requeuer = Requeuer(client.ApiClient())
    requeuer.core = NoPods()  # type: ignore[assignment]
    with pytest.raises(StoreError, match="listing"):
        requeuer.pending()
    reconciler = Reconciler(client.ApiClient(), NasStore(client.ApiClient()), interval_seconds=0.01)
    reconciler.core = NoPods()  # type: ignore[assignment]
    reconciler.store = type("Store", (), {"list": lambda self: ([], "1")})()  # type: ignore[assignment]
    with pytest.raises(StoreError, match="listing"):
        reconciler.reconcile_once()
    # The loop says so in one line (no traceback) and goes on.
    reconciler.start(watch_pods=False)
    try:
        for _ in range(1000):  # until the loop has tried once (each wait is the loop's own interval)
            if "reconcile failed" in caplog.text:
                break
            threading.Event().wait(0.01)
    finally:
        reconciler.stop()
    failed = [r for r in caplog.records if "reconcile failed" in r.getMessage()]
    assert failed and failed[0].exc_info is None


def test_a_pod_being_deleted_is_not_requeued() -> None:
    deleting = pending("d")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"

    class Reply:
        def list_pod_for_all_namespaces(self, **_: Any) -> Any:
            return type("Reply", (), {"data": json.dumps({"items": [pending("a"), deleting]})})()

    requeuer = Requeuer(client.ApiClient())
    requeuer.core = Reply()  # type: ignore[assignment]
    assert [p["metadata"]["name"] for p in requeuer.pending()] == ["a"]
