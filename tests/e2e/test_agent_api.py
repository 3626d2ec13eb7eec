"""The node agent against a real kube-apiserver, under its own ServiceAccount's credentials.

The agent runs as a real ``rtdra-agent`` process with the RBAC and the
ValidatingAdmissionPolicy of ``manifests/agent/agent.yaml`` applied, and a
ServiceAccount token bound to a Pod on its node - as the kubelet gives the
DaemonSet's pod - so the token carries the node's name and the policy can
hold the agent to its own node's NodeAllocationState. Simulated nodes use
``--backend none``; one test puts a real node (this machine's kernel,
``--backend deadline``) under an allocation the kernel refuses, and one
under an allocation that is then taken away. Kernel state is checked back
to where it was, as in tests/kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from hack.cluster import ControlPlane
from hack.pki import write_kubeconfig
from hack.stack import apply as apply_manifests
from hack.stack import manifest_documents
from rtdra import host, names, sched, tasks
from rtdra.ledger import NodeLedger, PodAllocation, Slot
from rtdra.store import NasStore, StoreError

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crds" / "nodeallocationstates.yaml"
AGENT_MANIFEST = REPO / "manifests" / "agent" / "agent.yaml"
NAMESPACE_MANIFEST = REPO / "manifests" / "namespace.yaml"
HOOK = REPO / "agent" / "hook.py"
NS = names.DEFAULT_NAMESPACE
SA = "rtdra-agent"
CAPACITY = 943_719  # what this machine measures per CPU (950000/1000000 less the fair server); any value works
KERNEL_LOCK = (
    Path("/run/lock/rtdra-kernel-tests.lock") if Path("/run/lock").is_dir() else Path("/tmp/rtdra-kernel-tests.lock")
)
OWN_NODE_ONLY = "may only write its own node's NodeAllocationState"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


# -- cluster objects ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_cluster(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The NAS CRD, the driver namespace and the agent's RBAC + admission policy, as the manifests say."""
    api = control_plane.api_client()
    try:
        docs = manifest_documents([CRD, NAMESPACE_MANIFEST, AGENT_MANIFEST])
        apply_manifests(api, [d for d in docs if d["kind"] != "DaemonSet"])  # waits for the CRD too
        yield control_plane
    finally:
        api.close()


@dataclass
class AgentIdentity:
    node: str
    kubeconfig: Path
    pod: str


def bound_token_kubeconfig(cp: ControlPlane, api: client.ApiClient, node: str, dest: Path) -> AgentIdentity:
    """A token for the agent's ServiceAccount bound to a Pod on ``node``, as the DaemonSet's pod would get.

    The TokenRequest names the Pod; kube-apiserver then embeds the Pod's node
    in the token, and authentication reports it as the user's extra
    ``authentication.kubernetes.io/node-name`` - what the policy checks.
    """
    core = client.CoreV1Api(api)
    pod = core.create_namespaced_pod(
        NS,
        {
            "metadata": {"generateName": f"rtdra-agent-{node}-"},
            "spec": {
                "nodeName": node,
                "serviceAccountName": SA,
                "containers": [{"name": "agent", "image": "rt-dra:latest"}],
            },
        },
    )
    request = {
        "spec": {
            "expirationSeconds": 3600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name, "uid": pod.metadata.uid},
        }
    }
    token = core.create_namespaced_service_account_token(SA, NS, request).status.token
    path = write_kubeconfig(dest, cp.server, cp.ca.cert_pem, f"system:serviceaccount:{NS}:{SA}", token=token)
    return AgentIdentity(node, path, pod.metadata.name)


@pytest.fixture
def identity(
    agent_cluster: ControlPlane, kube_api: client.ApiClient, make_node: Any, unique_name: Any, tmp_path: Path
) -> Iterator[Callable[[str | None], AgentIdentity]]:
    made: list[AgentIdentity] = []

    def make(node: str | None = None) -> AgentIdentity:
        name = node or unique_name("sim")
        make_node(name)
        ident = bound_token_kubeconfig(agent_cluster, kube_api, name, tmp_path / f"{name}.kubeconfig")
        made.append(ident)
        return ident

    yield make
    core = client.CoreV1Api(kube_api)
    store = NasStore(kube_api, NS)
    for ident in made:
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(ident.pod, NS, grace_period_seconds=0)
        store.delete(ident.node)


# -- the agent process ----------------------------------------------------------------------------------------


class AgentProcess:
    def __init__(self, ident: AgentIdentity, tmp: Path, *flags: str) -> None:
        self.ident = ident
        self.state = tmp / f"state-{ident.node}"
        self.log = tmp / f"agent-{ident.node}.log"
        argv = [sys.executable, "-m", "agent.cli", "--node-name", ident.node, "--kubeconfig", str(ident.kubeconfig)]
        argv += ["--namespace", NS, "--state-dir", str(self.state), "--no-cdi", "--reconcile-interval", "0.2", *flags]
        argv += ["--no-device-plugin"]  # never register with a kubelet that may run on this host
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def wait_serving(self) -> None:
        def serving() -> bool:
            assert self.proc.poll() is None, f"agent exited:\n{self.log.read_text()}"
            return (self.state / "agent.sock").exists()

        wait_for(serving, f"the agent of {self.ident.node} to serve:\n{self.log.read_text()}", timeout=60)

    def hook(self, state: bytes, stage: str = "createRuntime") -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, "-S", "-I", str(HOOK), "--socket", str(self.state / "agent.sock"), "--stage", stage]
        return subprocess.run(argv, input=state, capture_output=True, timeout=30, check=False)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def run(ident: AgentIdentity, *flags: str) -> AgentProcess:
        agent = AgentProcess(ident, tmp_path, *flags)
        started.append(agent)
        agent.wait_serving()
        return agent

    yield run
    for agent in started:
        agent.stop()


def oci_state(pid: int, pod: client.V1Pod, container: str) -> bytes:
    annotations = {
        "io.kubernetes.cri.sandbox-uid": pod.metadata.uid,
        "io.kubernetes.cri.sandbox-namespace": pod.metadata.namespace,
        "io.kubernetes.cri.sandbox-name": pod.metadata.name,
        "io.kubernetes.cri.container-name": container,
        "io.kubernetes.cri.container-type": "container",
    }
    return json.dumps({"ociVersion": "1.2.0", "id": f"ctr-{pid}", "pid": pid, "annotations": annotations}).encode()


def published(store: NasStore, node: str) -> NodeLedger | None:
    return store.get(node)


# -- simulated nodes: publishing, credentials ------------------------------------------------------------------


def test_simulated_agent_publishes_capacity_and_readiness_and_marks_not_ready_on_shutdown(
    identity: Callable[[str | None], AgentIdentity], run_agent: Callable[..., AgentProcess], kube_api: client.ApiClient
) -> None:
    ident = identity(None)
    agent = run_agent(ident, "--backend", "none", "--cpus", "8", "--capacity", str(CAPACITY))
    store = NasStore(kube_api, NS)
    ledger = wait_for(lambda: published(store, ident.node), "the agent's NAS")
    assert ledger.capacities == dict.fromkeys(range(8), CAPACITY)
    assert ledger.root_domain_capacity == 8 * CAPACITY and ledger.ready
    raw = store.get_object(ident.node)
    assert raw["status"] == "Ready" and raw["summary"]["cpus"] == 8
    assert agent.stop() == 0
    assert store.get_object(ident.node)["status"] == "NotReady"


def test_agent_credentials_write_their_own_nodes_nas_and_events_and_no_other_nodes(
    agent_cluster: ControlPlane,
    identity: Callable[[str | None], AgentIdentity],
    run_agent: Callable[..., AgentProcess],
    kube_api: client.ApiClient,
    unique_name: Any,
    tmp_path: Path,
) -> None:
    mine, other = identity(None), identity(None)
    run_agent(mine, "--backend", "none", "--cpus", "2", "--capacity", str(CAPACITY))
    admin = NasStore(kube_api, NS)
    admin.create(NodeLedger(other.node, {0: CAPACITY}))
    wait_for(lambda: published(admin, mine.node), "the agent's NAS")

    as_agent = agent_cluster.api_client(mine.kubeconfig)
    try:
        agent_store = NasStore(as_agent, NS)
        # Its own node: read, update.
        updated = agent_store.update(mine.node, lambda ledger: replace(ledger, prepared={"probe": {}}))
        assert "probe" in updated.prepared
        # Another node's: readable (the extender's view is shared), not writable - the admission policy says no.
        assert agent_store.get(other.node) is not None
        wait_for(lambda: OWN_NODE_ONLY in denial(as_agent, unique_name("ghost")), "the admission policy to be in force")
        with pytest.raises(StoreError) as refused:
            agent_store.update(other.node, lambda ledger: replace(ledger, ready=False))
        assert refused.value.status == 422  # the policy's denial (Invalid), not RBAC's 403
        with pytest.raises(StoreError) as refused_create:
            agent_store.create(NodeLedger(unique_name("ghost"), {0: CAPACITY}))
        assert refused_create.value.status == 422
        # No delete verb at all (RBAC).
        with pytest.raises(StoreError) as no_delete:
            agent_store.delete(mine.node)
        assert no_delete.value.status == 403
        # Events on pods: allowed.
        event = client.CoreV1Api(as_agent).create_namespaced_event(
            "default",
            {
                "metadata": {"generateName": "probe."},
                "involvedObject": {"kind": "Pod", "namespace": "default", "name": "p"},
                "reason": "Probe",
                "message": "rbac probe",
                "type": "Normal",
            },
        )
        client.CoreV1Api(kube_api).delete_namespaced_event(event.metadata.name, "default")
    finally:
        as_agent.close()

    # The same ServiceAccount with a token not bound to a pod (no node in it) writes no NAS at all.
    unbound = agent_cluster.api_client(agent_cluster.service_account_kubeconfig(NS, SA, path=tmp_path / "unbound"))
    try:
        with pytest.raises(StoreError) as refused_unbound:
            NasStore(unbound, NS).update(mine.node, lambda ledger: replace(ledger, ready=False))
        assert refused_unbound.value.status == 422
    finally:
        unbound.close()


def denial(api: client.ApiClient, node: str) -> str:
    """The API's own words refusing a (dry-run) create of ``node``'s NAS; the store's errors keep only the status."""
    body = {
        "apiVersion": f"{names.NAS_GROUP}/{names.NAS_VERSION}",
        "kind": names.NAS_KIND,
        "metadata": {"name": node},
        "spec": {},
    }
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            names.NAS_GROUP, names.NAS_VERSION, NS, names.NAS_PLURAL, body, dry_run="All"
        )
    except ApiException as err:
        return str(err.body)
    return ""


# -- the heartbeat: a silent agent's node takes no RT pods --------------------------------------------------------

EXTENDER_MANIFESTS = [
    REPO / "manifests" / "extender" / "serviceaccount.yaml",
    REPO / "manifests" / "extender" / "rbac.yaml",
]
LEASE_BOUND_S = 3.0


def agent_lease(api: client.ApiClient, node: str) -> dict[str, Any] | None:
    try:
        raw: Any = client.CoordinationV1Api(api).read_namespaced_lease(
            f"rtdra-agent-{node}", NS, _preload_content=False
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    lease: dict[str, Any] = json.loads(raw.data)
    return lease


def lease_denial(api: client.ApiClient, node: str, holder: str) -> str:
    """The API's own words refusing a (dry-run) create of ``node``'s agent Lease held by ``holder``."""
    body = {"metadata": {"name": f"rtdra-agent-{node}"}, "spec": {"holderIdentity": holder}}
    try:
        client.CoordinationV1Api(api).create_namespaced_lease(NS, body, dry_run="All")
    except ApiException as err:
        return str(err.body)
    return ""


@contextlib.contextmanager
def extender_filter(cp: ControlPlane, admin: client.ApiClient) -> Iterator[Callable[[str], dict[str, Any]]]:
    """The extender's filter (its production parts, in this process) under its ServiceAccount and RBAC."""
    from extender.app import EXTENSION, create_app
    from extender.config import ExtenderConfig

    apply_manifests(admin, manifest_documents(EXTENDER_MANIFESTS))
    kubeconfig = cp.service_account_kubeconfig(NS, "rtdra-extender")
    config = ExtenderConfig(
        kubeconfig=str(kubeconfig), namespace=NS, reconcile_interval_seconds=0, agent_lease_seconds=LEASE_BOUND_S
    )
    app = create_app(config)
    web = app.test_client()
    pod = {
        "metadata": {"name": "p", "namespace": "default", "uid": "uid-p",
                     "annotations": {names.CONTAINER_PREFIX + "ctr0": "runtime=2ms,period=10ms"}},
        "spec": {"containers": [{"name": "ctr0"}]},
    }  # fmt: skip

    def filter_(node: str) -> dict[str, Any]:
        body = {"Pod": pod, "Nodes": None, "NodeNames": [node]}
        reply = web.post("/filter", data=json.dumps(body), content_type="application/json")
        assert reply.status_code == 200
        result: dict[str, Any] = reply.get_json()
        return result

    try:
        yield filter_
    finally:
        ext = app.extensions[EXTENSION]
        ext.cache.stop()
        ext.heartbeats.stop()
        ext.claim_parameters.stop()


def test_a_sigkilled_agents_node_takes_no_rt_pods_once_its_lease_is_older_than_the_bound(
    agent_cluster: ControlPlane,
    identity: Callable[[str | None], AgentIdentity],
    run_agent: Callable[..., AgentProcess],
    kube_api: client.ApiClient,
) -> None:
    ident = identity(None)
    agent = run_agent(
        ident, "--backend", "none", "--cpus", "2", "--capacity", str(CAPACITY), "--lease-renew-interval", "0.5"
    )
    first = wait_for(lambda: agent_lease(kube_api, ident.node), "the agent's Lease")
    assert first["spec"]["holderIdentity"] == ident.node
    wait_for(
        lambda: renewed(agent_lease(kube_api, ident.node), first),
        "the agent to renew its Lease",
    )
    with extender_filter(agent_cluster, kube_api) as filter_:
        wait_for(
            lambda: filter_(ident.node).get("NodeNames") == [ident.node], "the filter to take the live agent's node"
        )

        agent.proc.kill()  # SIGKILL: no NotReady is published
        agent.proc.wait()
        assert NasStore(kube_api, NS).get_object(ident.node)["status"] == "Ready"

        reason = (
            f"node {ident.node} is not ready for real-time pods (its rt-dra agent has not renewed its Lease "
            f"{NS}/rtdra-agent-{ident.node} for more than {LEASE_BOUND_S:g}s)"
        )
        reply = wait_for(
            lambda: (r := filter_(ident.node)).get("FailedAndUnresolvableNodes") and r,
            "the filter to reject the silent agent's node",
            timeout=4 * LEASE_BOUND_S,
        )
        assert reply["NodeNames"] == []
        assert reply["FailedAndUnresolvableNodes"] == {ident.node: reason}


def renewed(lease: dict[str, Any] | None, first: dict[str, Any]) -> bool:
    return lease is not None and lease["spec"]["renewTime"] != first["spec"]["renewTime"]


def test_an_agent_may_write_only_its_own_nodes_lease_held_by_its_node(
    agent_cluster: ControlPlane, identity: Callable[[str | None], AgentIdentity], unique_name: Any
) -> None:
    mine = identity(None)
    as_agent = agent_cluster.api_client(mine.kubeconfig)
    try:
        ghost = unique_name("ghost")
        wait_for(lambda: "own node's Lease" in lease_denial(as_agent, ghost, ghost), "the lease policy to be in force")
        assert "own node's Lease" in lease_denial(as_agent, mine.node, ghost)  # its name, another holder
        assert lease_denial(as_agent, mine.node, mine.node) == ""  # its own: allowed
    finally:
        as_agent.close()


# -- a real node: the kernel's word ---------------------------------------------------------------------------


@pytest.fixture
def real_kernel() -> Iterator[None]:
    """Root + SCHED_DEADLINE, one kernel test at a time on this machine, ``total_bw`` back where it was."""
    if os.geteuid() != 0 or not sched.deadline_supported():
        if os.environ.get("RTDRA_REQUIRE_KERNEL", "") not in ("", "0", "false", "no"):
            pytest.fail("needs root and SCHED_DEADLINE (RTDRA_REQUIRE_KERNEL=1)")
        pytest.skip("needs root and SCHED_DEADLINE")
    with open(KERNEL_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = host.root_domain_total_bw()
        try:
            yield
        finally:
            if before is not None:
                after = wait_for_value(host.root_domain_total_bw, before)
                if after != before:
                    host.rebuild_root_domains()
                    pytest.fail(f"deadline bandwidth leaked in the kernel: total_bw {before} -> {after} (repaired)")
            fcntl.flock(lock, fcntl.LOCK_UN)


def wait_for_value(read: Callable[[], int | None], expected: int) -> int | None:
    value = read()
    for _ in range(50):
        if value == expected:
            break
        time.sleep(0.01)
        value = read()
    return value


TWO_THREADS = "import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()\ntime.sleep(600)\n"


@pytest.fixture
def container() -> Iterator[int]:
    """A two-thread process standing for the container (this machine's scheduler is the node's)."""
    proc = subprocess.Popen([sys.executable, "-c", TWO_THREADS], stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(sched.threads_of(proc.pid)) == 2, "the container's second thread")
        for tid in sched.threads_of(proc.pid):
            tasks.wait_blocked(tid)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def rt_pod(kube_api: client.ApiClient, unique_name: Any) -> Callable[[str], client.V1Pod]:
    def make(node: str) -> client.V1Pod:
        namespace = unique_name("agent-e2e")
        core = client.CoreV1Api(kube_api)
        core.create_namespace({"metadata": {"name": namespace}})
        return core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": "rt-app"},
                "spec": {"nodeName": node, "containers": [{"name": "rt", "image": "busybox"}]},
            },
        )

    return make


def allocate(store: NasStore, node: str, pod: client.V1Pod, slots: tuple[Slot, ...]) -> None:
    """Write the pod's allocation as the extender would - without its fit check, so the kernel can disagree."""
    allocation = PodAllocation(pod.metadata.uid, pod.metadata.namespace, pod.metadata.name, {"rt": slots})
    store.update(node, lambda ledger: replace(ledger, pods={**ledger.pods, allocation.uid: allocation}))


@pytest.mark.kernel
def test_a_kernel_refusal_on_a_real_node_is_an_event_on_the_pod_and_in_the_nas(
    real_kernel: None,
    identity: Callable[[str | None], AgentIdentity],
    run_agent: Callable[..., AgentProcess],
    kube_api: client.ApiClient,
    rt_pod: Callable[[str], client.V1Pod],
    container: int,
) -> None:
    ident = identity(None)
    agent = run_agent(ident, "--backend", "deadline")
    store = NasStore(kube_api, NS)
    wait_for(lambda: published(store, ident.node), "the agent's NAS")
    pod = rt_pod(ident.node)
    free = host.discover_capacity().free_bw
    over = free // 2 + 1  # two of these exceed the root domain by a hair; the kernel says EBUSY
    allocate(store, ident.node, pod, (Slot(0, over << 10, 1 << 30, 1 << 30), Slot(1, over << 10, 1 << 30, 1 << 30)))

    done = agent.hook(oci_state(container, pod, "rt"))
    assert done.returncode == 1 and b"EBUSY" in done.stderr, done.stderr
    assert all(sched.sched_getattr(tid).policy == sched.SCHED_OTHER for tid in sched.threads_of(container))

    def refusal_event() -> list[client.CoreV1Event]:
        events = client.CoreV1Api(kube_api).list_namespaced_event(pod.metadata.namespace).items
        return [e for e in events if e.involved_object.uid == pod.metadata.uid]

    event = wait_for(refusal_event, "the refusal's Event on the pod")[0]
    assert (event.reason, event.type) == ("KernelRefusedBandwidth", "Warning")
    assert "EBUSY" in event.message and event.involved_object.field_path == "spec.containers{rt}"
    assert event.source.component == "rtdra-agent" and event.source.host == ident.node

    def recorded() -> str:
        ledger = store.get(ident.node)
        entry = (ledger.prepared if ledger else {}).get(pod.metadata.uid) or {}
        return str(((entry.get("containers") or {}).get("rt") or {}).get("error", ""))

    assert "EBUSY" in wait_for(recorded, "the refusal in the NAS's preparedClaims")


@pytest.mark.kernel
def test_a_real_node_releases_the_reservation_when_the_pods_allocation_disappears(
    real_kernel: None,
    identity: Callable[[str | None], AgentIdentity],
    run_agent: Callable[..., AgentProcess],
    kube_api: client.ApiClient,
    rt_pod: Callable[[str], client.V1Pod],
    container: int,
) -> None:
    ident = identity(None)
    agent = run_agent(ident, "--backend", "deadline")
    store = NasStore(kube_api, NS)
    wait_for(lambda: published(store, ident.node), "the agent's NAS")
    pod = rt_pod(ident.node)
    allocate(store, ident.node, pod, (Slot(1, 1_000_000, 10_000_000, 10_000_000),))

    done = agent.hook(oci_state(container, pod, "rt"))
    assert done.returncode == 0, done.stderr
    assert sched.sched_getattr(container).is_deadline
    wait_for(lambda: pod.metadata.uid in (store.get(ident.node) or NodeLedger("", {})).prepared, "preparedClaims")

    store.update(ident.node, lambda ledger: ledger.release(pod.metadata.uid))  # the pod was deleted
    wait_for(lambda: not sched.sched_getattr(container).is_deadline, "the reservation to be released", timeout=15)
    wait_for(
        lambda: pod.metadata.uid not in (store.get(ident.node) or NodeLedger("", {})).prepared,
        "preparedClaims to drop the pod",
    )
