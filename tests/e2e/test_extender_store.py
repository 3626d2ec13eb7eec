"""The ledger store and the reconciler against a real kube-apiserver.

Compare-and-swap is the whole concurrency story of the extender, so it is
tested where it really happens: concurrent writers against kube-apiserver,
real 409s, the CRD's structural schema, a real watch.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from extender.cache import WatchedLedgerCache
from extender.reconcile import Reconciler
from extender.writes import NodeWrites
from rtdra import names
from rtdra.ledger import NodeLedger, Overcommit, PodAllocation, Slot
from rtdra.store import AlreadyExists, NasStore, StoreError

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crds" / "nodeallocationstates.yaml"
MS = 1_000_000
CAP = 943719


def install_crd(api: client.ApiClient) -> None:
    body = yaml.safe_load(CRD.read_text())
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as err:
        if err.status != 409:
            raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        if any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
            return
        time.sleep(0.2)
    raise AssertionError("the NodeAllocationState CRD did not become Established")


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    except ApiException as err:
        if err.status != 409:
            raise


@pytest.fixture
def store(kube_api: client.ApiClient, unique_name: Any) -> Iterator[NasStore]:
    install_crd(kube_api)
    namespace = unique_name("nas")
    ensure_namespace(kube_api, namespace)
    yield NasStore(kube_api, namespace)


def pod_allocation(uid: str, *cpus: int, runtime_ms: int = 30, period_ms: int = 100) -> PodAllocation:
    slots = tuple(Slot(cpu, runtime_ms * MS, period_ms * MS, period_ms * MS) for cpu in cpus)
    return PodAllocation(uid, "default", f"pod-{uid}", {"c": slots}, reserved_at="2026-11-26T10:00:00Z")


def test_a_ledger_round_trips_through_the_api_with_its_schema(store: NasStore) -> None:
    ledger = NodeLedger("n1", {0: CAP, 1: CAP}, root_domain_capacity=2 * CAP).reserve(pod_allocation("u1", 0, 1))
    created = store.create(ledger)
    assert created.resource_version
    fetched = store.get("n1")
    assert fetched is not None
    assert fetched.pods == ledger.pods and fetched.capacities == ledger.capacities
    assert fetched.root_domain_capacity == 2 * CAP and fetched.ready
    raw = store.get_object("n1")
    assert raw["summary"] == {"cpus": 2, "pods": 1, "reserved": ledger.summary()["reserved"]}
    with pytest.raises(AlreadyExists):
        store.create(ledger)
    assert store.get("absent") is None


def test_the_crd_schema_refuses_a_malformed_ledger(store: NasStore) -> None:
    body = NodeLedger("bad", {0: CAP}).reserve(pod_allocation("u1", 0)).to_nas(store.namespace)
    body["spec"]["allocatableCpuset"][0]["rtcpu"]["capacity"] = 2 << 20  # more than a whole CPU
    body["status"] = "Maybe"
    body["spec"]["allocatedClaims"]["u1"]["containers"]["c"]["rtcpu"]["cpuset"][0]["runtimeNs"] = 10  # < 1024 ns
    with pytest.raises(ApiException) as err:
        client.CustomObjectsApi(store.api).create_namespaced_custom_object(
            names.NAS_GROUP, names.NAS_VERSION, store.namespace, names.NAS_PLURAL, body
        )
    assert err.value.status == 422
    assert "capacity" in err.value.body and "status" in err.value.body and "runtimeNs" in err.value.body


def test_a_stale_write_is_refused_with_409_and_update_retries_on_the_fresh_value(store: NasStore) -> None:
    store.create(NodeLedger("n1", {0: CAP, 1: CAP}))
    stale = store.get("n1")
    assert stale is not None
    store.update("n1", lambda ledger: ledger.reserve(pod_allocation("u1", 0)))
    with pytest.raises(StoreError) as err:
        store.replace(stale.reserve(pod_allocation("u2", 0)))
    assert err.value.status == 409
    seen: list[int] = []

    def change(ledger: NodeLedger) -> NodeLedger:
        seen.append(len(ledger.pods))
        return ledger.reserve(pod_allocation("u2", 0))

    stored = store.update("n1", change)
    assert set(stored.pods) == {"u1", "u2"} and seen == [1]


def test_update_keeps_labels_and_writes_nothing_when_unchanged(store: NasStore) -> None:
    created = store.create(NodeLedger("n1", {0: CAP}))
    client.CustomObjectsApi(store.api).patch_namespaced_custom_object(
        names.NAS_GROUP, names.NAS_VERSION, store.namespace, names.NAS_PLURAL, "n1",
        {"metadata": {"labels": {"owner": "agent"}}},
    )  # fmt: skip
    before = store.get_object("n1")["metadata"]["resourceVersion"]
    assert store.update("n1", lambda ledger: ledger).resource_version == before
    store.update("n1", lambda ledger: ledger.reserve(pod_allocation("u1", 0)))
    assert store.get_object("n1")["metadata"]["labels"] == {"owner": "agent"}
    assert created.resource_version != store.get_object("n1")["metadata"]["resourceVersion"]


def test_a_ledger_write_leaves_out_managed_fields_and_the_api_server_keeps_every_owner(store: NasStore) -> None:
    store.create(NodeLedger("n1", {0: CAP}))
    client.CustomObjectsApi(store.api).patch_namespaced_custom_object(
        names.NAS_GROUP, names.NAS_VERSION, store.namespace, names.NAS_PLURAL, "n1",
        {"metadata": {"labels": {"owner": "agent"}}}, field_manager="rtdra-agent",
    )  # fmt: skip
    read = store.get_object("n1")
    assert any(e.get("manager") == "rtdra-agent" for e in read["metadata"]["managedFields"])
    sent = store.update("n1", lambda ledger: ledger.reserve(pod_allocation("u1", 0)))
    stored = store.get_object("n1")["metadata"]
    assert "u1" in sent.pods
    assert any(e.get("manager") == "rtdra-agent" for e in stored["managedFields"]), "the agent's ownership was lost"
    assert stored["labels"] == {"owner": "agent"}


def test_an_overcommitting_update_raises_and_writes_nothing(store: NasStore) -> None:
    store.create(NodeLedger("n1", {0: CAP}).reserve(pod_allocation("u1", 0, runtime_ms=80)))
    before = store.get_object("n1")["metadata"]["resourceVersion"]
    with pytest.raises(Overcommit):
        store.update("n1", lambda ledger: ledger.reserve(pod_allocation("u2", 0, runtime_ms=20)))
    assert store.get_object("n1")["metadata"]["resourceVersion"] == before


def test_concurrent_writers_never_overcommit_and_every_fitting_reservation_lands(
    store: NasStore, control_plane: Any
) -> None:
    # 2 CPUs at 94.5% each hold 3 reservations of 30% per CPU: 6 fit, 18 writers race.
    store.create(NodeLedger("n1", {0: CAP, 1: CAP}))
    results: dict[str, str] = {}
    start = threading.Barrier(18)

    def writer(i: int) -> None:
        api = control_plane.api_client()
        mine = NasStore(api, store.namespace)
        start.wait()
        try:

            def reserve(ledger: NodeLedger) -> NodeLedger:
                free = [cpu for cpu in ledger.cpus if ledger.fits(cpu, Slot(cpu, 30 * MS, 100 * MS, 100 * MS))]
                if not free:
                    raise Overcommit("full")
                return ledger.reserve(pod_allocation(f"u{i}", free[0]))

            mine.update("n1", reserve)
            results[f"u{i}"] = "reserved"
        except Overcommit:
            results[f"u{i}"] = "full"
        finally:
            api.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(18)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    final = store.get("n1")
    assert final is not None
    assert sorted(results.values()).count("reserved") == 6 == len(final.pods)
    assert set(final.pods) == {uid for uid, r in results.items() if r == "reserved"}
    for cpu in final.cpus:
        assert final.used(cpu) <= final.capacities[cpu]
        assert len(final.slots_on(cpu)) == 3


def test_reuse_last_writes_without_reading_after_its_own_write_and_redecides_after_someone_elses(
    store: NasStore, kube_api: client.ApiClient
) -> None:
    store.create(NodeLedger("n1", {0: CAP, 1: CAP}))
    store.update("n1", lambda ledger: ledger.reserve(pod_allocation("u1", 0)))
    reads: list[str] = []
    original = store.get_object

    def counted(node: str) -> dict[str, Any]:
        reads.append(node)
        return original(node)

    store.get_object = counted  # type: ignore[method-assign]
    seen: list[set[str]] = []

    def reserve(uid: str) -> Any:
        def change(ledger: NodeLedger) -> NodeLedger:
            seen.append(set(ledger.pods))
            return ledger.reserve(pod_allocation(uid, 1))

        return change

    store.update("n1", reserve("u2"), reuse_last=True)
    assert reads == [] and seen == [{"u1"}]  # this store wrote last: no read
    other = NasStore(kube_api, store.namespace)  # another process releases u1 meanwhile
    other.update("n1", lambda ledger: ledger.release("u1"))
    seen.clear()
    stored = store.update("n1", reserve("u3"), reuse_last=True)
    assert seen == [{"u1", "u2"}, {"u2"}]  # decided on the remembered version, 409, decided again on a read
    assert reads == ["n1"] and set(stored.pods) == {"u2", "u3"}


def test_reuse_last_never_trusts_a_remembered_version_for_a_decision_that_writes_nothing(store: NasStore) -> None:
    store.create(NodeLedger("n1", {0: CAP}))
    store.update("n1", lambda ledger: ledger.reserve(pod_allocation("u1", 0, runtime_ms=80)))
    NasStore(store.api, store.namespace).update("n1", lambda ledger: ledger.release("u1"))  # unseen by `store`

    def keep_or_reserve(ledger: NodeLedger) -> NodeLedger:  # a retried bind: "already reserved" writes nothing
        return ledger if "u1" in ledger.pods else ledger.reserve(pod_allocation("u1", 0, runtime_ms=80))

    assert "u1" in store.update("n1", keep_or_reserve, reuse_last=True).pods
    assert "u1" in (store.get("n1") or NodeLedger("n1", {})).pods  # re-decided on a read, and written
    store.update("n1", lambda ledger: ledger.release("u1"))
    NasStore(store.api, store.namespace).update("n1", lambda ledger: ledger.reserve(pod_allocation("u9", 0)))
    # On the remembered (empty) version u2 fits; the write is refused (409) and the fresh decision raises.
    with pytest.raises(Overcommit):
        store.update("n1", lambda ledger: ledger.reserve(pod_allocation("u2", 0, runtime_ms=80)), reuse_last=True)


def test_writes_waiting_for_one_node_go_out_together_and_a_change_that_no_longer_fits_fails_alone(
    store: NasStore,
) -> None:
    store.create(NodeLedger("n1", {0: CAP}))
    writes = NodeWrites(store)
    written: list[set[str]] = []
    replace = store.replace

    def counted(ledger: NodeLedger, metadata: Any = None) -> NodeLedger:
        written.append(set(ledger.pods))
        return replace(ledger, metadata)

    store.replace = counted  # type: ignore[method-assign]
    entered, release = threading.Event(), threading.Event()
    results: dict[str, str] = {}

    def slow_first(ledger: NodeLedger) -> NodeLedger:
        entered.set()
        release.wait(10)  # hold the node's write open while the others queue up
        return ledger.reserve(pod_allocation("first", 0, runtime_ms=30))

    def reserve(uid: str) -> Any:
        return lambda ledger: ledger.reserve(pod_allocation(uid, 0, runtime_ms=30))

    def run(uid: str, step: Any) -> None:
        try:
            writes.apply("n1", step)
            results[uid] = "reserved"
        except Overcommit:
            results[uid] = "full"

    first = threading.Thread(target=run, args=("first", slow_first))
    first.start()
    assert entered.wait(10)
    queued = [threading.Thread(target=run, args=(f"q{i}", reserve(f"q{i}"))) for i in range(4)]
    for t in queued:
        t.start()
    time.sleep(0.5)
    release.set()
    for t in [first, *queued]:
        t.join(30)
    final = store.get("n1")
    assert final is not None
    # 30% each on a 90% CPU: the first and two queued ones fit; the other two fail alone.
    assert results["first"] == "reserved" and sorted(results.values()).count("reserved") == 3
    assert set(final.pods) == {uid for uid, r in results.items() if r == "reserved"}
    assert final.used(0) <= final.capacities[0]
    assert written == [{"first"}, set(final.pods)], "the four queued changes went out as one write"


def test_the_watch_fed_cache_follows_creates_updates_and_deletes(store: NasStore) -> None:
    store.create(NodeLedger("n1", {0: CAP}))
    cache = WatchedLedgerCache(store, watch_timeout_seconds=5).start()
    try:
        assert cache.wait_synced(10)
        assert cache.get("n1") is not None
        store.create(NodeLedger("n2", {0: CAP, 1: CAP}))
        store.update("n1", lambda ledger: ledger.reserve(pod_allocation("u1", 0)))
        store.delete("n2")
        store.create(NodeLedger("n3", {0: CAP}))

        def caught_up() -> bool:
            n1 = cache.get("n1")
            return n1 is not None and "u1" in n1.pods and cache.get("n3") is not None and cache.get("n2") is None

        deadline = time.monotonic() + 15  # spans at least one server-side watch timeout (5 s)
        while time.monotonic() < deadline and not caught_up():
            time.sleep(0.05)
        assert caught_up()
        time.sleep(6)
        store.update("n3", lambda ledger: ledger.reserve(pod_allocation("u3", 0)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "u3" not in (cache.get("n3") or NodeLedger("x", {})).pods:
            time.sleep(0.05)
        assert "u3" in (cache.get("n3") or NodeLedger("x", {})).pods, "the cache stopped following after a re-watch"
    finally:
        cache.stop()


# -- reconcile ---------------------------------------------------------------------------------------


def create_pod(api: client.ApiClient, namespace: str, name: str, node: str | None = None) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "registry.example/rt:1"}]}
    pod = core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": spec})
    if node:
        core.create_namespaced_pod_binding(
            name, namespace,
            {"metadata": {"name": name, "uid": pod.metadata.uid}, "target": {"kind": "Node", "name": node}},
            _preload_content=False,
        )  # fmt: skip
    return {"uid": pod.metadata.uid, "name": name}


def reservation(namespace: str, pod: dict[str, Any], cpu: int, reserved_at: str) -> PodAllocation:
    slots = (Slot(cpu, 10 * MS, 100 * MS, 100 * MS),)
    return PodAllocation(pod["uid"], namespace, pod["name"], {"c": slots}, reserved_at=reserved_at)


def test_reconcile_releases_reservations_of_gone_finished_misbound_and_never_bound_pods(
    store: NasStore, kube_api: client.ApiClient, unique_name: Any
) -> None:
    ns = unique_name("rec")
    ensure_namespace(kube_api, ns)
    core = client.CoreV1Api(kube_api)
    now = dt.datetime.now(dt.UTC)
    old = (now - dt.timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fresh = now.strftime("%Y-%m-%dT%H:%M:%SZ")

    bound = create_pod(kube_api, ns, "bound", node="n1")
    pending_fresh = create_pod(kube_api, ns, "pending-fresh")
    pending_old = create_pod(kube_api, ns, "pending-old")
    elsewhere = create_pod(kube_api, ns, "elsewhere", node="n2")
    deleted = create_pod(kube_api, ns, "deleted")
    core.delete_namespaced_pod("deleted", ns, grace_period_seconds=0)
    recreated_old = create_pod(kube_api, ns, "recreated")
    core.delete_namespaced_pod("recreated", ns, grace_period_seconds=0)
    create_pod(kube_api, ns, "recreated", node="n1")  # same name, new UID
    finished = create_pod(kube_api, ns, "finished", node="n1")
    core.patch_namespaced_pod_status("finished", ns, {"status": {"phase": "Succeeded"}})

    ledger = NodeLedger("n1", dict.fromkeys(range(8), CAP))
    for cpu, (pod, at) in enumerate(
        [(bound, old), (pending_fresh, fresh), (pending_old, old), (elsewhere, fresh),
         (deleted, fresh), (recreated_old, fresh), (finished, old)]
    ):  # fmt: skip
        ledger = ledger.reserve(reservation(ns, pod, cpu, at))
    store.create(ledger)

    reconciler = Reconciler(kube_api, store, grace_seconds=60, interval_seconds=3600)
    released = reconciler.reconcile_once()
    kept = store.get("n1")
    assert kept is not None
    assert set(kept.pods) == {bound["uid"], pending_fresh["uid"]}
    assert sorted(released["n1"]) == sorted(
        p["uid"] for p in (pending_old, elsewhere, deleted, recreated_old, finished)
    )
    assert reconciler.reconcile_once() == {}  # idempotent


def test_a_deleted_or_finished_pod_releases_its_reservation_at_once(
    store: NasStore, kube_api: client.ApiClient, unique_name: Any
) -> None:
    ns = unique_name("gone")
    ensure_namespace(kube_api, ns)
    core = client.CoreV1Api(kube_api)
    fresh = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    deleted = create_pod(kube_api, ns, "deleted", node="n1")
    finished = create_pod(kube_api, ns, "finished", node="n1")
    unannotated = create_pod(kube_api, ns, "unannotated", node="n1")
    ledger = NodeLedger("n1", dict.fromkeys(range(4), CAP))
    for cpu, pod in enumerate((deleted, finished, unannotated)):
        ledger = ledger.reserve(reservation(ns, pod, cpu, fresh))
        if pod is not unannotated:  # what bind writes
            core.patch_namespaced_pod(
                pod["name"], ns, {"metadata": {"annotations": {names.ALLOCATION: json.dumps({"node": "n1"})}}}
            )
    store.create(ledger)
    reconciler = Reconciler(kube_api, store, grace_seconds=60, interval_seconds=3600).start()
    try:
        time.sleep(1)  # the watch is established
        core.delete_namespaced_pod("deleted", ns, grace_period_seconds=0)
        core.patch_namespaced_pod_status("finished", ns, {"status": {"phase": "Failed"}})
        core.delete_namespaced_pod("unannotated", ns, grace_period_seconds=0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and set((store.get("n1") or ledger).pods) != {unannotated["uid"]}:
            time.sleep(0.05)
        assert set((store.get("n1") or ledger).pods) == {unannotated["uid"]}  # the periodic pass handles the rest
    finally:
        reconciler.stop()


def test_kubectl_get_nas_shows_cpus_reserved_pods_and_readiness(store: NasStore) -> None:
    store.create(NodeLedger("n1", {0: CAP, 1: CAP}).reserve(pod_allocation("u1", 0, 1)))
    store.create(NodeLedger("n2", {0: CAP}, ready=False))
    path = f"/apis/{names.NAS_GROUP}/{names.NAS_VERSION}/namespaces/{store.namespace}/{names.NAS_PLURAL}"
    request = store.api.param_serialize(
        "GET", path, header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"],
    )  # fmt: skip
    response = store.api.call_api(*request)
    response.read()
    table = json.loads(response.data)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "CPUs", "Reserved", "Pods", "Ready", "Age"]
    rows = {row["cells"][0]: row["cells"][1:5] for row in table["rows"]}
    assert rows == {"n1": [2, "33.3%", 1, "Ready"], "n2": [1, "0.0%", 0, "NotReady"]}
