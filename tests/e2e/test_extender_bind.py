"""The extender as deployed: gunicorn workers, the manifests' RBAC, a real kube-apiserver and kube-scheduler.

- concurrent binds (threads x gunicorn workers) racing for the last bandwidth
  of one node never overcommit a CPU;
- bind is idempotent, refuses a second node, and rolls back when the Binding fails;
- a restarted extender rebuilds its view from the API alone;
- with the real kube-scheduler: RT pods land only where they fit, their CPUs
  are recorded, an unplaceable pod stays Pending with our reason in its events,
  and pods without the opt-in resource never reach the extender.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from extender.bind import Binder, BindError, now_rfc3339
from extender.pods import pending_view
from extender.reconcile import Reconciler
from rtdra import names
from rtdra.certs import CertificateAuthority
from rtdra.ledger import NodeLedger
from rtdra.store import NasStore

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
NAMESPACE = names.DEFAULT_NAMESPACE
CAP = 943719
MS = 1_000_000


# -- setup helpers ----------------------------------------------------------------------------------


def apply(api: client.ApiClient, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        try:
            utils.create_from_dict(api, doc)
        except utils.FailToCreateError as err:
            if any(e.status != 409 for e in err.api_exceptions):
                raise


def establish_crd(api: client.ApiClient, manifest: str = "nodeallocationstates.yaml", name: str = "") -> None:
    apply(api, MANIFESTS / "crds" / manifest)
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(name or f"{names.NAS_PLURAL}.{names.NAS_GROUP}")
        if any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
            return
        time.sleep(0.2)
    raise AssertionError("CRD not Established")


@pytest.fixture(scope="module")
def extender_kubeconfig(control_plane: Any) -> Path:
    """A kubeconfig for the extender's ServiceAccount with exactly the manifests' RBAC."""
    with control_plane.api_client() as api:
        establish_crd(api)
        establish_crd(api, "rtclaimparameters.yaml", f"{names.CLAIM_PARAMETERS_PLURAL}.{names.CLAIM_PARAMETERS_GROUP}")
        apply(api, MANIFESTS / "namespace.yaml")
        apply(api, MANIFESTS / "extender" / "serviceaccount.yaml")
        apply(api, MANIFESTS / "extender" / "rbac.yaml")
    return Path(control_plane.service_account_kubeconfig(NAMESPACE, "rtdra-extender"))


@pytest.fixture
def nas(control_plane: Any, extender_kubeconfig: Path) -> Iterator[NasStore]:
    """The admin's store in the driver namespace; ledgers created through it are deleted afterwards."""
    api = control_plane.api_client()
    store = NasStore(api, NAMESPACE)
    created: list[str] = []
    original = store.create

    def create(ledger: NodeLedger) -> NodeLedger:
        created.append(ledger.node)
        return original(ledger)

    store.create = create  # type: ignore[method-assign]
    yield store
    for node in created:
        store.delete(node)
    api.close()


@pytest.fixture
def namespace(kube_api: client.ApiClient, unique_name: Any) -> Iterator[str]:
    """A fresh namespace; its pods are deleted afterwards (no controller would, and the
    scheduler would keep retrying the Pending ones in later tests)."""
    name = unique_name("rt")
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_collection_namespaced_pod(name, grace_period_seconds=0)


def rt_pod(
    api: client.ApiClient, namespace: str, name: str, request: str | None, *, opt_in: bool = True,
    placement: str | None = None,
) -> str:  # fmt: skip
    """Create a pod (as the webhook would leave it: annotation + opt-in resource); returns its UID."""
    annotations = {names.CONTAINER_PREFIX + "ctr0": request} if request else {}
    if placement is not None:
        annotations[names.PLACEMENT] = placement
    resources = {"requests": {names.DL_RESOURCE: "1"}, "limits": {names.DL_RESOURCE: "1"}} if opt_in else {}
    body = {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "ctr0", "image": "registry.example/rt:1", "resources": resources}]},
    }
    pod = client.CoreV1Api(api).create_namespaced_pod(namespace, body)
    return str(pod.metadata.uid)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_extender(
    kubeconfig: Path,
    tmp_path: Path,
    *,
    workers: int = 2,
    threads: int = 4,
    tls: TLS | None = None,
    reconcile_seconds: float = 0,
    agent_lease_seconds: float = 0,
) -> Iterator[str]:
    """``rtdra-extender`` (gunicorn) on a free loopback port; yields its base URL.

    These tests write the ledgers by hand, with no agent behind them, so the
    agents' heartbeat is not checked unless a test asks (``agent_lease_seconds``;
    tests/e2e/test_agent_api.py checks it with real agents).
    """
    port = free_port()
    log = tmp_path / f"extender-{port}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [
        sys.executable, "-m", "extender.cli", "--bind", f"127.0.0.1:{port}", "--kubeconfig", str(kubeconfig),
        "--namespace", NAMESPACE, "--workers", str(workers), "--threads", str(threads),
        "--reconcile-interval-seconds", str(reconcile_seconds), "--agent-lease-seconds", str(agent_lease_seconds),
    ]  # fmt: skip
    probe: dict[str, Any] = {}
    if tls is not None:
        cmd += ["--tls-cert-file", str(tls.server_cert), "--tls-key-file", str(tls.server_key)]
        cmd += ["--client-ca-file", str(tls.ca)]
        probe = {"verify": str(tls.ca), "cert": (str(tls.client_cert), str(tls.client_key))}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        deadline, ready = time.monotonic() + 60, 0
        while time.monotonic() < deadline and ready < 3 * workers:  # every worker synced (requests spread)
            assert proc.poll() is None, f"rtdra-extender exited:\n{log.read_text()[-3000:]}"
            try:
                ready = ready + 1 if requests.get(f"{url}/readyz", timeout=5, **probe).status_code == 200 else 0
            except requests.RequestException:  # not listening yet, or a worker still booting
                ready = 0
            time.sleep(0.1)
        assert ready, f"rtdra-extender never became ready:\n{log.read_text()[-3000:]}"
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass(frozen=True)
class TLS:
    """A throw-away CA with a serving certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, directory: Path) -> TLS:
        ca = CertificateAuthority.create("rtdra-extender-test-ca")
        (directory / "ca.key").write_bytes(ca.key_pem)
        paths = {
            name: directory / f"{name}.pem" for name in ("ca", "server_cert", "server_key", "client_cert", "client_key")
        }
        paths["ca"].write_bytes(ca.cert_pem)
        server = ca.issue("rtdra-extender", server=True, ips=["127.0.0.1"])
        client_pair = ca.issue("system:kube-scheduler", client=True)
        paths["server_cert"].write_bytes(server[0])
        paths["server_key"].write_bytes(server[1])
        paths["client_cert"].write_bytes(client_pair[0])
        paths["client_key"].write_bytes(client_pair[1])
        return cls(**paths)

    @property
    def client(self) -> tuple[str, str]:
        return str(self.client_cert), str(self.client_key)


def foreign_ca(directory: Path) -> tuple[Path, tuple[str, str]]:
    """A CA the extender does not trust (its certificate file) and a client certificate and key it issued."""
    other = CertificateAuthority.create("someone-else")
    cert, key = other.issue("system:kube-scheduler", client=True)
    for name, data in (("foreign-ca.pem", other.cert_pem), ("foreign.pem", cert), ("foreign.key", key)):
        (directory / name).write_bytes(data)
    return directory / "foreign-ca.pem", (str(directory / "foreign.pem"), str(directory / "foreign.key"))


def expired_client(ca: Any, directory: Path) -> tuple[str, str]:
    """A client certificate from the trusted ``ca`` that expired yesterday, and its key."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "system:kube-scheduler")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    (directory / "expired.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "expired.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(directory / "expired.pem"), str(directory / "expired.key")


def decide(url: str, verb: str, body: dict[str, Any]) -> requests.Response:
    """POST a filter or prioritize, again while the worker that took it has not synced its cache yet.

    Each gunicorn worker lists the ledgers itself, and ``/readyz`` answers from whichever worker takes the
    probe, so a call right after readiness can reach one still listing (a filter then answers an Error, a
    prioritize a 503; once it answered every node 0 and failed this module's restart test)."""
    deadline = time.monotonic() + 30
    while True:
        reply = requests.post(f"{url}/{verb}", json=body, timeout=10)
        unsynced = reply.status_code == 503 or (
            isinstance(reply.json(), dict) and "not synced" in str(reply.json().get("Error"))
        )
        if not unsynced or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


def bind(url: str, namespace: str, name: str, uid: str, node: str) -> str:
    body = {"PodName": name, "PodNamespace": namespace, "PodUID": uid, "Node": node}
    response = requests.post(f"{url}/bind", json=body, timeout=30)
    assert response.status_code == 200
    return str(response.json()["Error"])


def read_pod(api: client.ApiClient, namespace: str, name: str) -> Any:
    return client.CoreV1Api(api).read_namespaced_pod(name, namespace)


# -- bind over HTTP, concurrently ----------------------------------------------------------------------


# "read": every bind reads its pod; "watched": the pod watch (which runs with the reconciler) already knows it.
@pytest.mark.parametrize("reconcile_seconds", [0, 3600], ids=["pods-read", "pods-watched"])
def test_concurrent_binds_across_workers_never_overcommit_the_last_bandwidth(
    kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path, unique_name: Any,
    tmp_path: Path, reconcile_seconds: float,
) -> None:  # fmt: skip
    node = unique_name("n")
    nas.create(NodeLedger(node, {0: CAP, 1: CAP}))
    # 30% a CPU: three fit on each of the two CPUs - 6 of 16 racing pods can be placed.
    pods = {f"p{i}": rt_pod(kube_api, namespace, f"p{i}", "runtime=30ms,period=100ms") for i in range(16)}
    errors: dict[str, str] = {}
    with running_extender(
        extender_kubeconfig, tmp_path, workers=3, threads=4, reconcile_seconds=reconcile_seconds
    ) as url:
        start = threading.Barrier(len(pods))

        def one(name: str) -> None:
            start.wait()
            errors[name] = bind(url, namespace, name, pods[name], node)

        threads = [threading.Thread(target=one, args=(name,)) for name in pods]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        metrics = requests.get(f"{url}/metrics", timeout=5).text

    bound = {name for name, error in errors.items() if error == ""}
    assert len(errors) == 16 and len(bound) == 6, errors
    refused = [e for e in errors.values() if e]
    assert all("insufficient deadline bandwidth" in e for e in refused), refused
    final = nas.get(node)
    assert final is not None
    assert {a.name for a in final.pods.values()} == bound
    for cpu in final.cpus:
        assert final.used(cpu) <= final.capacities[cpu]
        assert len(final.slots_on(cpu)) == 3
    for name in pods:
        pod = read_pod(kube_api, namespace, name)
        if name in bound:
            assert pod.spec.node_name == node
            annotation = json.loads(pod.metadata.annotations[names.ALLOCATION])
            assert annotation["node"] == node
            assert annotation["containers"]["ctr0"]["cpus"] == list(final.pods[pods[name]].cpus_of("ctr0"))
            assert annotation["containers"]["ctr0"]["runtimeNs"] == 30 * MS
        else:
            assert pod.spec.node_name is None
    assert 'rtdra_extender_binds_total{result="bound"} 6.0' in metrics
    assert 'rtdra_extender_binds_total{result="error"} 10.0' in metrics


def test_binding_twice_to_the_same_node_reserves_once_and_another_node_is_an_error(
    kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path, unique_name: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    n1, n2 = unique_name("n"), unique_name("n")
    nas.create(NodeLedger(n1, {0: CAP, 1: CAP}))
    nas.create(NodeLedger(n2, {0: CAP, 1: CAP}))
    uid = rt_pod(kube_api, namespace, "twice", "runtime=20ms,period=100ms,cpus=2")
    with running_extender(extender_kubeconfig, tmp_path) as url:
        assert bind(url, namespace, "twice", uid, n1) == ""
        first = nas.get(n1)
        assert bind(url, namespace, "twice", uid, n1) == ""
        error = bind(url, namespace, "twice", uid, n2)
        stale_uid = bind(url, namespace, "twice", "not-the-uid", n1)
    again = nas.get(n1)
    assert first is not None and again is not None
    assert again.pods == first.pods and len(again.pods) == 1
    assert again.resource_version == first.resource_version  # the retry wrote nothing
    assert error == f"pod {namespace}/twice is already bound to node {n1}, not {n2}"
    assert "was recreated" in stale_uid
    assert (nas.get(n2) or NodeLedger(n2, {})).pods == {}


def test_a_failed_binding_rolls_the_reservation_back(
    control_plane: Any, kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path,
    unique_name: Any,
) -> None:  # fmt: skip
    node = unique_name("n")
    nas.create(NodeLedger(node, {0: CAP}))
    # An identity with the extender's ledger rights and pod rights, but no pods/binding: the Binding gets a 403.
    rbac = client.RbacAuthorizationV1Api(kube_api)
    sa = unique_name("nobind")
    client.CoreV1Api(kube_api).create_namespaced_service_account(NAMESPACE, {"metadata": {"name": sa}})
    subject = [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    rbac.create_cluster_role(
        {"metadata": {"name": sa}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]}
    )
    rbac.create_cluster_role_binding(
        {"metadata": {"name": sa}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
         "name": sa}, "subjects": subject}
    )  # fmt: skip
    rbac.create_namespaced_role_binding(
        NAMESPACE,
        {"metadata": {"name": sa}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
         "name": "rtdra-extender"}, "subjects": subject},
    )  # fmt: skip
    try:
        uid = rt_pod(kube_api, namespace, "nobind", "runtime=50ms,period=100ms")
        with control_plane.api_client(control_plane.service_account_kubeconfig(NAMESPACE, sa)) as api:
            binder = Binder(api, NasStore(api, NAMESPACE))
            with pytest.raises(BindError, match=f"binding pod {namespace}/nobind to {node} failed: 403"):
                binder.bind(namespace, "nobind", uid, node)
        after = nas.get(node)
        assert after is not None and after.pods == {}
        assert read_pod(kube_api, namespace, "nobind").spec.node_name is None
    finally:
        rbac.delete_cluster_role(sa)
        rbac.delete_cluster_role_binding(sa)
        rbac.delete_namespaced_role_binding(sa, NAMESPACE)


def watched(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The pod as the extender's pod watch would hold it now."""
    raw: Any = client.CoreV1Api(api).read_namespaced_pod(name, namespace, _preload_content=False)
    return pending_view(json.loads(raw.data))


def test_a_bind_from_an_outdated_view_of_the_pod_binds_it_at_its_current_version(
    kube_api: client.ApiClient, nas: NasStore, namespace: str, unique_name: Any
) -> None:
    node = unique_name("n")
    nas.create(NodeLedger(node, {0: CAP}))
    uid = rt_pod(kube_api, namespace, "touched", "runtime=20ms,period=100ms")
    seen = watched(kube_api, namespace, "touched")
    core = client.CoreV1Api(kube_api)
    core.patch_namespaced_pod("touched", namespace, {"metadata": {"annotations": {"team": "a"}}})  # a newer version
    binder = Binder(kube_api, NasStore(kube_api, NAMESPACE), pods={uid: seen}.get)
    outcome = binder.bind(namespace, "touched", uid, node)
    pod = read_pod(kube_api, namespace, "touched")
    assert pod.spec.node_name == node and not outcome.already_bound
    assert json.loads(pod.metadata.annotations[names.ALLOCATION])["containers"]["ctr0"]["runtimeNs"] == 20 * MS
    ledger = nas.get(node)
    assert ledger is not None and set(ledger.pods) == {uid}


class StalledBinder(Binder):
    """A replica that pauses (SIGSTOP, a frozen VM, a long GC) between its reservation and its Binding:
    its first Binding waits until :attr:`resume` is set, then goes out as it would have."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reserved, self.resume = threading.Event(), threading.Event()
        self.outcome: BaseException | str | None = None

    def _create_binding(self, *args: Any, **kwargs: Any) -> None:
        if not self.reserved.is_set():
            self.reserved.set()
            assert self.resume.wait(60)
        super()._create_binding(*args, **kwargs)

    def bind_in_background(self, namespace: str, name: str, uid: str, node: str) -> threading.Thread:
        def run() -> None:
            try:
                self.bind(namespace, name, uid, node)
                self.outcome = "bound"
            except BaseException as err:
                self.outcome = err

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert self.reserved.wait(30), "the stalled bind never reserved"
        return thread


def reconcile_past_the_grace_period(api: client.ApiClient) -> tuple[Reconciler, dict[str, list[str]]]:
    """One reconcile pass, as if the stall had outlasted the bind grace period."""
    reconciler = Reconciler(api, NasStore(api, NAMESPACE), grace_seconds=60, interval_seconds=3600)
    return reconciler, reconciler.reconcile_once(now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120))


def test_a_bind_stalled_past_the_grace_period_cannot_complete_on_cpus_given_away(
    control_plane: Any, kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path,
    unique_name: Any,
) -> None:  # fmt: skip
    """The failover case of active replicas: a bind that reserved and stalled, its reservation released by
    another replica's reconciler and the CPU bound to another pod, must not bind when it resumes."""
    node = unique_name("n")
    nas.create(NodeLedger(node, {0: CAP}))  # one CPU: room for one of the two 60 % pods
    stalled = rt_pod(kube_api, namespace, "stalled", "runtime=60ms,period=100ms")
    other = rt_pod(kube_api, namespace, "other", "runtime=60ms,period=100ms")
    with control_plane.api_client(str(extender_kubeconfig)) as api:  # the extender's own RBAC
        replica_a = StalledBinder(api, NasStore(api, NAMESPACE))
        thread = replica_a.bind_in_background(namespace, "stalled", stalled, node)
        try:
            held = nas.get(node)
            assert held is not None and set(held.pods) == {stalled}
            reserved_at = held.pods[stalled].reserved_at
            _, released = reconcile_past_the_grace_period(api)  # replica B's reconciler
            assert released.get(node) == [stalled]
            fence = read_pod(kube_api, namespace, "stalled").metadata.annotations[names.RELEASED]
            assert json.loads(fence) == {"node": node, "reservedAt": reserved_at}
            Binder(api, NasStore(api, NAMESPACE)).bind(namespace, "other", other, node)  # replica B binds the CPU
        finally:
            replica_a.resume.set()
            thread.join(60)
        assert isinstance(replica_a.outcome, BindError), replica_a.outcome
        assert "was released meanwhile" in str(replica_a.outcome)
        assert read_pod(kube_api, namespace, "stalled").spec.node_name is None
        assert read_pod(kube_api, namespace, "other").spec.node_name == node
        after = nas.get(node)
        assert after is not None and set(after.pods) == {other}  # the CPU is the other pod's alone
        with pytest.raises(BindError, match="insufficient deadline bandwidth"):  # kube-scheduler's retry
            Binder(api, NasStore(api, NAMESPACE)).bind(namespace, "stalled", stalled, node)


def test_a_retry_that_finds_the_stalled_binds_reservation_being_released_does_not_keep_it(
    control_plane: Any, kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path,
    unique_name: Any,
) -> None:  # fmt: skip
    """kube-scheduler's retry reaches another replica after the reconciler marked the pod and before it
    released the reservation: keeping that reservation would bind the pod to CPUs about to be freed."""
    node = unique_name("n")
    nas.create(NodeLedger(node, {0: CAP}))
    uid = rt_pod(kube_api, namespace, "stalled", "runtime=60ms,period=100ms")
    with control_plane.api_client(str(extender_kubeconfig)) as api:
        replica_a = StalledBinder(api, NasStore(api, NAMESPACE))
        thread = replica_a.bind_in_background(namespace, "stalled", uid, node)
        retried: list[BaseException | str] = []

        class Reconciling(Reconciler):
            def _fence(self, node_: str, allocation: Any, now: dt.datetime) -> bool:
                fenced = super()._fence(node_, allocation, now)
                try:  # the retry, between the mark and the release
                    Binder(api, NasStore(api, NAMESPACE)).bind(namespace, "stalled", uid, node)
                    retried.append("bound")
                except BindError as err:
                    retried.append(err)
                return fenced

        try:
            Reconciling(api, NasStore(api, NAMESPACE), grace_seconds=60, interval_seconds=3600).reconcile_once(
                now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
            )
        finally:
            replica_a.resume.set()
            thread.join(60)
        assert len(retried) == 1 and isinstance(retried[0], BindError), retried
        assert "is being released" in str(retried[0])
        assert isinstance(replica_a.outcome, BindError), replica_a.outcome
        assert read_pod(kube_api, namespace, "stalled").spec.node_name is None
        after = nas.get(node)
        assert after is not None and after.pods == {}
        fenced = json.loads(read_pod(kube_api, namespace, "stalled").metadata.annotations[names.RELEASED])
        while now_rfc3339() == fenced["reservedAt"]:  # reservedAt counts seconds: a new one must differ
            time.sleep(0.05)
        Binder(api, NasStore(api, NAMESPACE)).bind(namespace, "stalled", uid, node)  # the next retry binds afresh
        pod = read_pod(kube_api, namespace, "stalled")
        after = nas.get(node)
        assert pod.spec.node_name == node and after is not None and set(after.pods) == {uid}
        annotation = json.loads(pod.metadata.annotations[names.ALLOCATION])
        assert annotation["containers"]["ctr0"]["cpus"] == [0]


def test_binds_one_after_another_reuse_one_api_connection(
    control_plane: Any, kube_api: client.ApiClient, nas: NasStore, namespace: str, unique_name: Any
) -> None:
    node = unique_name("n")
    nas.create(NodeLedger(node, {0: CAP}))
    api = control_plane.api_client()
    try:
        binder = Binder(api, NasStore(api, NAMESPACE))
        for i in range(3):
            uid = rt_pod(kube_api, namespace, f"p{i}", "runtime=10ms,period=100ms")
            binder.bind(namespace, f"p{i}", uid, node)
        pools = api.rest_client.pool_manager.pools
        # urllib3's pool container refuses iteration; keys() is its thread-safe listing.
        opened = sum(pools[key].num_connections for key in pools.keys())  # noqa: SIM118
        assert opened == 1, f"{opened} connections for 3 binds in a row: a reply was left unread"
        ledger = nas.get(node)
        assert ledger is not None and len(ledger.pods) == 3
    finally:
        api.close()


def test_a_pod_whose_request_changed_after_it_was_seen_is_refused_and_its_reservation_released(
    kube_api: client.ApiClient, nas: NasStore, namespace: str, unique_name: Any
) -> None:
    node = unique_name("n")
    nas.create(NodeLedger(node, {0: CAP}))
    uid = rt_pod(kube_api, namespace, "changed", "runtime=20ms,period=100ms")
    seen = watched(kube_api, namespace, "changed")
    client.CoreV1Api(kube_api).patch_namespaced_pod(
        "changed",
        namespace,
        {"metadata": {"annotations": {names.CONTAINER_PREFIX + "ctr0": "runtime=90ms,period=100ms"}}},
    )
    binder = Binder(kube_api, NasStore(kube_api, NAMESPACE), pods={uid: seen}.get)
    with pytest.raises(BindError, match="its real-time request changed while it was being bound"):
        binder.bind(namespace, "changed", uid, node)
    assert read_pod(kube_api, namespace, "changed").spec.node_name is None
    assert (nas.get(node) or NodeLedger(node, {})).pods == {}


def test_a_pod_recreated_after_it_was_seen_is_not_bound_and_nothing_stays_reserved(
    kube_api: client.ApiClient, nas: NasStore, namespace: str, unique_name: Any
) -> None:
    node = unique_name("n")
    nas.create(NodeLedger(node, {0: CAP}))
    old = rt_pod(kube_api, namespace, "again", "runtime=20ms,period=100ms")
    seen = watched(kube_api, namespace, "again")
    core = client.CoreV1Api(kube_api)
    core.delete_namespaced_pod("again", namespace, grace_period_seconds=0)
    wait_for(lambda: not any(p.metadata.name == "again" for p in core.list_namespaced_pod(namespace).items))
    new = rt_pod(kube_api, namespace, "again", "runtime=20ms,period=100ms")
    binder = Binder(kube_api, NasStore(kube_api, NAMESPACE), pods={old: seen}.get)
    with pytest.raises(BindError, match="was recreated"):
        binder.bind(namespace, "again", old, node)
    pod = read_pod(kube_api, namespace, "again")
    assert pod.metadata.uid == new and pod.spec.node_name is None
    assert (nas.get(node) or NodeLedger(node, {})).pods == {}


def test_bind_refusals_name_the_problem(
    kube_api: client.ApiClient, nas: NasStore, namespace: str, control_plane: Any, unique_name: Any
) -> None:
    node = unique_name("n")
    nas.create(NodeLedger(node, {0: CAP}))
    binder = Binder(kube_api, NasStore(kube_api, NAMESPACE))
    with pytest.raises(BindError, match=f"pod {namespace}/absent does not exist"):
        binder.bind(namespace, "absent", "", node)
    uid = rt_pod(kube_api, namespace, "big", "runtime=50ms,period=100ms,cpus=2")
    with pytest.raises(BindError, match=f"node {node}: insufficient deadline bandwidth"):
        binder.bind(namespace, "big", uid, node)
    with pytest.raises(BindError, match="has no NodeAllocationState"):
        binder.bind(namespace, "big", uid, unique_name("nowhere"))
    plain = rt_pod(kube_api, namespace, "plain", None)
    assert binder.bind(namespace, "plain", plain, node).reserved is None  # no RT request: bound, nothing reserved
    assert read_pod(kube_api, namespace, "plain").spec.node_name == node
    assert (nas.get(node) or NodeLedger(node, {})).pods == {}


def test_a_restarted_extender_rebuilds_its_view_from_the_api(
    kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path, unique_name: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    full, empty = unique_name("n"), unique_name("n")
    nas.create(NodeLedger(full, {0: CAP}))
    nas.create(NodeLedger(empty, {0: CAP}))
    uid = rt_pod(kube_api, namespace, "first", "runtime=80ms,period=100ms")
    with running_extender(extender_kubeconfig, tmp_path) as url:
        assert bind(url, namespace, "first", uid, full) == ""
    pod = {
        "metadata": {
            "name": "next",
            "namespace": namespace,
            "annotations": {names.CONTAINER_PREFIX + "ctr0": "runtime=50ms,period=100ms"},
        },
        "spec": {"containers": [{"name": "ctr0"}]},
    }
    with running_extender(extender_kubeconfig, tmp_path) as url:
        reply = decide(url, "filter", {"Pod": pod, "Nodes": None, "NodeNames": [full, empty]})
        scores = decide(url, "prioritize", {"Pod": pod, "Nodes": None, "NodeNames": [full, empty]})
    assert reply.status_code == 200
    assert reply.json()["NodeNames"] == [empty]
    assert reply.json()["FailedNodes"][full].startswith("insufficient deadline bandwidth")
    assert scores.json() == [{"Host": full, "Score": 0}, {"Host": empty, "Score": 10}]  # the only one it fits


def test_a_pod_naming_rt_claim_parameters_without_the_webhook_is_filtered_and_bound_by_them(
    kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path, unique_name: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    small, big = unique_name("n"), unique_name("n")
    nas.create(NodeLedger(small, {0: CAP}))
    nas.create(NodeLedger(big, {0: CAP, 1: CAP}))
    custom = client.CustomObjectsApi(kube_api)
    group, version, plural = names.CLAIM_PARAMETERS_GROUP, names.CLAIM_PARAMETERS_VERSION, names.CLAIM_PARAMETERS_PLURAL
    body = {
        "apiVersion": f"{group}/{version}",
        "kind": names.CLAIM_PARAMETERS_KIND,
        "metadata": {"name": "two-cpus"},
        "spec": {"count": 2, "runtime": 25000, "period": 100000},
    }
    custom.create_namespaced_custom_object(group, version, namespace, plural, body)
    pod = {
        "metadata": {"name": "legacy", "annotations": {names.CLAIM_PARAMETERS_PREFIX + "ctr0": "two-cpus"}},
        "spec": {"containers": [{"name": "ctr0", "image": "registry.example/rt:1"}]},
    }
    created = client.CoreV1Api(kube_api).create_namespaced_pod(namespace, pod)
    as_sent = json.loads(json.dumps(kube_api.sanitize_for_serialization(created)))
    missing = copy.deepcopy(as_sent)
    missing["metadata"]["annotations"][names.CLAIM_PARAMETERS_PREFIX + "ctr0"] = "absent"
    with running_extender(extender_kubeconfig, tmp_path, workers=1) as url:
        reply = decide(url, "filter", {"Pod": as_sent, "Nodes": None, "NodeNames": [small, big]})
        refused = decide(url, "filter", {"Pod": missing, "Nodes": None, "NodeNames": [big]})
        error = bind(url, namespace, "legacy", created.metadata.uid, big)
    assert reply.json()["NodeNames"] == [big]
    assert "needs 2 CPUs" in reply.json()["FailedNodes"][small]
    assert "RtClaimParameters 'absent' does not exist" in refused.json()["FailedAndUnresolvableNodes"][big]
    assert error == ""
    ledger = nas.get(big)
    assert ledger is not None
    assert sorted(ledger.pods[created.metadata.uid].cpus_of("ctr0")) == [0, 1]
    slots = ledger.pods[created.metadata.uid].containers["ctr0"]
    assert {(s.runtime_ns, s.period_ns) for s in slots} == {(25 * MS, 100 * MS)}


# -- with the real kube-scheduler ------------------------------------------------------------------------


def scheduler_config(url: str, *, node_cache_capable: bool = True) -> dict[str, Any]:
    config = yaml.safe_load((MANIFESTS / "extender" / "scheduler-config-http.yaml").read_text())
    config["extenders"][0]["urlPrefix"] = url
    config["extenders"][0]["nodeCacheCapable"] = node_cache_capable
    return {"extenders": config["extenders"]}


def wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


@pytest.mark.parametrize("node_cache_capable", [True, False], ids=["node-names", "node-list"])
def test_kube_scheduler_places_rt_pods_only_where_they_fit_through_the_extender(
    control_plane: Any, kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path,
    make_node: Any, unique_name: Any, tmp_path: Path, node_cache_capable: bool,
) -> None:  # fmt: skip
    small, big, bare = unique_name("small"), unique_name("big"), unique_name("bare")
    for node in (small, big, bare):
        make_node(node)
    nas.create(NodeLedger(small, {0: CAP}))
    nas.create(NodeLedger(big, {0: CAP, 1: CAP, 2: CAP}))  # `bare` has no ledger
    core = client.CoreV1Api(kube_api)
    with running_extender(extender_kubeconfig, tmp_path) as url:
        control_plane.configure_scheduler(scheduler_config(url, node_cache_capable=node_cache_capable))
        try:
            two = rt_pod(kube_api, namespace, "two-cpus", "runtime=50ms,period=100ms,cpus=2")
            placed = wait_for(lambda: read_pod(kube_api, namespace, "two-cpus").spec.node_name)
            assert placed == big, (control_plane.logs / "kube-scheduler.log").read_text()[-4000:]
            ledger = nas.get(big)
            assert ledger is not None and set(ledger.pods[two].cpus_of("ctr0")) <= {0, 1, 2}
            assert len(ledger.pods[two].cpus_of("ctr0")) == 2
            allocation = json.loads(read_pod(kube_api, namespace, "two-cpus").metadata.annotations[names.ALLOCATION])
            assert allocation["containers"]["ctr0"]["cpus"] == list(ledger.pods[two].cpus_of("ctr0"))

            rt_pod(kube_api, namespace, "too-big", "runtime=20ms,period=100ms,cpus=4")

            def event_messages() -> str:
                events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=too-big").items
                return " | ".join(e.message or "" for e in events if e.reason == "FailedScheduling")

            messages = wait_for(lambda: "insufficient deadline bandwidth" in event_messages() and event_messages())
            assert "container ctr0 needs 4 CPUs with 20.0 percent free, node has 3" in messages
            assert "has no NodeAllocationState" in messages
            assert read_pod(kube_api, namespace, "too-big").spec.node_name is None

            # Stop the scheduler's retries of the unplaceable pod, then count what a plain pod costs us.
            core.delete_namespaced_pod("too-big", namespace, grace_period_seconds=0)
            time.sleep(2)
            before = requests.get(f"{url}/metrics", timeout=5).text
            rt_pod(kube_api, namespace, "plain", None, opt_in=False)
            plain_node = wait_for(lambda: read_pod(kube_api, namespace, "plain").spec.node_name)
            assert plain_node  # scheduled and bound by kube-scheduler alone
            after = requests.get(f"{url}/metrics", timeout=5).text
            assert _count(after, "filter") == _count(before, "filter")
            assert _count(after, "bind") == _count(before, "bind")
        finally:
            control_plane.configure_scheduler(None)
            for name in ("two-cpus", "too-big", "plain"):
                with suppress(ApiException):
                    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_with_filter_verb_pick_kube_scheduler_takes_the_node_the_placement_ranks_first_without_scoring(
    control_plane: Any, kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path,
    make_node: Any, unique_name: Any, tmp_path: Path,
) -> None:  # fmt: skip
    one, three = unique_name("one"), unique_name("three")
    for node in (one, three):
        make_node(node)
    nas.create(NodeLedger(one, {0: CAP}))  # the same pod leaves 1 CPU fuller than 3
    nas.create(NodeLedger(three, {0: CAP, 1: CAP, 2: CAP}))
    config = scheduler_config("")
    with running_extender(extender_kubeconfig, tmp_path) as url:
        config["extenders"][0].update(urlPrefix=url, filterVerb="pick")
        control_plane.configure_scheduler(config)
        try:
            before = requests.get(f"{url}/metrics", timeout=5).text
            rt_pod(kube_api, namespace, "packed", "runtime=10ms,period=100ms", placement="pack")
            rt_pod(kube_api, namespace, "spread", "runtime=10ms,period=100ms", placement="spread")
            for name, node in (("packed", one), ("spread", three)):
                placed = wait_for(lambda name=name: read_pod(kube_api, namespace, name).spec.node_name)
                assert placed == node, (control_plane.logs / "kube-scheduler.log").read_text()[-4000:]
            after = requests.get(f"{url}/metrics", timeout=5).text
            assert _count(after, "pick") - _count(before, "pick") == 2
            assert _count(after, "prioritize") == _count(before, "prioritize")  # one node left: no scoring at all
            assert _count(after, "bind") - _count(before, "bind") == 2
        finally:
            control_plane.configure_scheduler(None)
            for name in ("packed", "spread"):
                with suppress(ApiException):
                    client.CoreV1Api(kube_api).delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def _count(metrics: str, verb: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("rtdra_extender_requests_total{") and f'verb="{verb}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_kube_scheduler_reaches_the_extender_over_https_with_its_client_certificate(
    control_plane: Any, kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path,
    make_node: Any, unique_name: Any, tmp_path: Path,
) -> None:  # fmt: skip
    tls = TLS.make(tmp_path)
    node = unique_name("tls")
    make_node(node)
    nas.create(NodeLedger(node, {0: CAP, 1: CAP}))
    with running_extender(extender_kubeconfig, tmp_path, tls=tls) as url:
        # No client certificate: kubelet's probes (/healthz, /readyz) are answered, everything else is refused.
        assert requests.get(f"{url}/healthz", verify=str(tls.ca), timeout=5).status_code == 200
        for path in ("filter", "prioritize", "bind", "metrics"):
            assert requests.post(f"{url}/{path}", json={}, verify=str(tls.ca), timeout=5).status_code == 403, path
        other_ca, foreign = foreign_ca(tmp_path)
        ca = CertificateAuthority.from_pem(tls.ca.read_bytes(), (tmp_path / "ca.key").read_bytes())
        for wrong in (foreign, expired_client(ca, tmp_path)):  # another CA's client certificate; an expired one
            with pytest.raises(requests.exceptions.SSLError):
                requests.get(f"{url}/healthz", verify=str(tls.ca), cert=wrong, timeout=5)
        with pytest.raises(requests.exceptions.SSLError):  # and a client that trusts another CA refuses the server
            requests.get(f"{url}/healthz", verify=str(other_ca), cert=tls.client, timeout=5)
        assert requests.get(f"{url}/healthz", verify=str(tls.ca), cert=tls.client, timeout=5).status_code == 200
        config = yaml.safe_load((MANIFESTS / "extender" / "scheduler-config.yaml").read_text())
        extender = config["extenders"][0]
        extender["urlPrefix"] = url
        extender["tlsConfig"] = {
            "caFile": str(tls.ca),
            "certFile": str(tls.client_cert),
            "keyFile": str(tls.client_key),
        }
        control_plane.configure_scheduler({"extenders": config["extenders"]})
        try:
            uid = rt_pod(kube_api, namespace, "over-tls", "runtime=10ms,period=100ms")
            assert wait_for(lambda: read_pod(kube_api, namespace, "over-tls").spec.node_name) == node
            ledger = nas.get(node)
            assert ledger is not None and uid in ledger.pods
        finally:
            control_plane.configure_scheduler(None)


def test_deleting_a_pod_lets_kube_scheduler_place_a_pending_one_in_its_room(
    control_plane: Any, kube_api: client.ApiClient, nas: NasStore, namespace: str, extender_kubeconfig: Path,
    make_node: Any, unique_name: Any, tmp_path: Path,
) -> None:  # fmt: skip
    node = unique_name("one")
    make_node(node)
    nas.create(NodeLedger(node, {0: CAP}))
    core = client.CoreV1Api(kube_api)
    with running_extender(extender_kubeconfig, tmp_path, reconcile_seconds=3600) as url:
        control_plane.configure_scheduler(scheduler_config(url))
        try:
            rt_pod(kube_api, namespace, "first", "runtime=60ms,period=100ms")
            assert wait_for(lambda: read_pod(kube_api, namespace, "first").spec.node_name) == node
            rt_pod(kube_api, namespace, "second", "runtime=60ms,period=100ms")
            assert wait_for(lambda: any(e.reason == "FailedScheduling" for e in core.list_namespaced_event(
                namespace, field_selector="involvedObject.name=second").items))  # fmt: skip
            core.delete_namespaced_pod("first", namespace, grace_period_seconds=0)
            # released by the extender's pod watch, found by kube-scheduler's retry after the deletion
            placed = wait_for(lambda: read_pod(kube_api, namespace, "second").spec.node_name, timeout=60)
            log = (control_plane.logs / "kube-scheduler.log").read_text().splitlines()
            assert placed == node, "\n".join(line for line in log if "second" in line or "first" in line)[-6000:]
        finally:
            control_plane.configure_scheduler(None)
