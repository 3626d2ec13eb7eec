"""The agent's DRA side against a real kube-apiserver and kube-scheduler, driven as kubelet drives it.

- The ResourceSlice pool the agent publishes (``agent.dra.slices``) is what the real API stores,
  and the real kube-scheduler's DRA allocator books bandwidth on it (consumable capacity): a pod
  with a ResourceClaim lands on the node (a Node object without kubelet) and its claim is allocated.
- The plugin (``agent.dra.plugin``) is then driven over its REAL unix sockets by a client that
  speaks the upstream protos exactly as kubelet does: ``pluginregistration.Registration``
  (``GetInfo`` / ``NotifyRegistrationStatus``) on the registry socket, then
  ``NodePrepareResources`` / ``NodeUnprepareResources`` of ``v1`` and ``v1beta1`` on the
  service socket; the plugin reads the ResourceClaim from the API.
- Kernel: a claim prepared over gRPC, then a "container" (a sleeping process) started through the
  createRuntime hook of the claim's CDI spec, as runc runs it: real SCHED_DEADLINE read back with
  ``sched_getattr``; unprepare gives it back to the kernel.

The webhook that writes a claim's capacity request is the cluster side's: claims here write it
explicitly (``rtdra.dra.capacity_request``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from agent import cdi, grpcserver
from agent._generated.dra.v1 import api_pb2 as v1
from agent._generated.dra.v1 import api_pb2_grpc as v1_grpc
from agent._generated.dra.v1beta1 import api_pb2 as v1beta1
from agent._generated.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from agent._generated.pluginregistration.v1 import api_pb2 as reg
from agent._generated.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from agent.backends.deadline import DeadlineBackend
from agent.backends.none import NoneBackend
from agent.dra.claims import ClaimState
from agent.dra.plugin import DraPlugin
from agent.dra.prepare import Preparer
from agent.dra.slices import SlicePublisher
from agent.enforce import Enforcer
from agent.events import LogEvents
from agent.kubeapi import ClaimReader
from agent.server import HookServer
from agent.store import FileStore
from hack.stack import KERNEL_LOCK, wait_for
from rtdra import dra, host, sched
from rtdra.request import Reservation
from tests.conftest import kernel_unavailable

pytestmark = pytest.mark.e2e

RES = Reservation(2_000_000, 10_000_000, 10_000_000)
PARAMS = {
    "apiVersion": dra.PARAMETERS_API_VERSION,
    "kind": dra.PARAMETERS_KIND,
    "spec": {"runtime": 2000, "period": 10000},
}
RESOURCE = ("resource.k8s.io", "v1")


def objects(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def device_class(kube_api: client.ApiClient) -> Iterator[str]:
    body = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": dra.DEVICE_CLASS},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{dra.DRIVER}"'}}]},
    }
    with contextlib.suppress(ApiException):
        objects(kube_api).create_cluster_custom_object(*RESOURCE, "deviceclasses", body)
    yield dra.DEVICE_CLASS


@pytest.fixture
def namespace(kube_api: client.ApiClient, unique_name: Any) -> Iterator[str]:
    name = unique_name("dra")
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def rt_claim(name: str, count: int = 1, parameters: dict[str, Any] = PARAMS) -> dict[str, Any]:
    """A claim as a user (or the webhook) writes it: ``count`` CPUs, each booking the reservation's bandwidth."""
    reservation = dra.reservation_from_parameters(parameters, name)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "cpu",
                        "exactly": {
                            "deviceClassName": dra.DEVICE_CLASS,
                            "allocationMode": "ExactCount",
                            "count": count,
                            "capacity": {"requests": {dra.CAPACITY: str(dra.capacity_request(reservation))}},
                        },
                    }
                ],
                "config": [{"opaque": {"driver": dra.DRIVER, "parameters": parameters}}],
            }
        },
    }


def claim_pod(name: str, node: str, claim: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "app", "image": "busybox", "resources": {"claims": [{"name": "rt"}]}}],
            "resourceClaims": [{"name": "rt", "resourceClaimName": claim}],
        },
    }


def allocated(api: client.ApiClient, ns: str, name: str) -> dict[str, Any] | None:
    obj = objects(api).get_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", name)
    return obj if (obj.get("status") or {}).get("allocation") else None


def allocate(api: client.ApiClient, ns: str, node: str, claim: dict[str, Any], pod: str) -> dict[str, Any]:
    """Create the claim and a pod using it; the real kube-scheduler allocates it on ``node``."""
    objects(api).create_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", claim)
    client.CoreV1Api(api).create_namespaced_pod(ns, claim_pod(pod, node, claim["metadata"]["name"]))
    return wait_for(
        f"claim {claim['metadata']['name']} allocated", lambda: allocated(api, ns, claim["metadata"]["name"])
    )


CAPACITY = 996147


def devices_of(cpus: int, capacity: int = CAPACITY) -> list[dra.CpuDevice]:
    return [dra.CpuDevice(cpu, capacity, core=cpu, numa=0) for cpu in range(cpus)]


# -- the pool ------------------------------------------------------------------------------------------


def test_the_pool_is_published_kept_current_with_a_new_generation_and_deleted(
    kube_api: client.ApiClient, make_node: Any
) -> None:
    node = make_node()["metadata"]["name"]
    current = devices_of(2)
    publisher = SlicePublisher(kube_api, node, lambda: current)
    assert publisher.sync() == 1
    (published,) = publisher.published()
    assert published["spec"]["pool"] == {"name": node, "generation": 1, "resourceSliceCount": 1}
    assert published["spec"]["devices"][1] == dra.slice_device(current[1])  # stored as sent: the API knows every field
    assert published["metadata"]["ownerReferences"][0]["kind"] == "Node"
    assert publisher.sync() == 1  # nothing changed: no new generation
    current = devices_of(2, CAPACITY - 1024)  # re-measured
    assert publisher.sync() == 2
    (published,) = publisher.published()
    assert published["spec"]["devices"][0]["capacity"][dra.CAPACITY]["value"] == str(CAPACITY - 1024)
    objects(kube_api).delete_cluster_custom_object(*RESOURCE, "resourceslices", published["metadata"]["name"])
    assert publisher.sync() == 1  # deleted behind its back (kubelet does that): put back
    publisher.delete()
    assert publisher.published() == []


# -- the plugin, as kubelet speaks to it ----------------------------------------------------------------


class Kubelet:
    """The calls kubelet makes, over the plugin's real sockets, with the upstream protos."""

    def __init__(self, registry_socket: Path) -> None:
        self.registry_socket = registry_socket

    def register(self) -> reg.PluginInfo:
        with grpcserver.dial(self.registry_socket) as channel:
            stub = reg_grpc.RegistrationStub(channel)
            info = stub.GetInfo(reg.InfoRequest(), timeout=5)
            stub.NotifyRegistrationStatus(reg.RegistrationStatus(plugin_registered=True), timeout=5)
        return info

    def call(self, info: reg.PluginInfo, version: str, method: str, claims: list[tuple[str, str, str]]) -> Any:
        pb, grpc_mod = (v1, v1_grpc) if version == "v1" else (v1beta1, v1beta1_grpc)
        request_type = getattr(pb, f"{method}Request")
        request = request_type(claims=[pb.Claim(namespace=n, uid=u, name=c) for n, u, c in claims])
        with grpcserver.dial(Path(info.endpoint)) as channel:
            return getattr(grpc_mod.DRAPluginStub(channel), method)(request, timeout=10)


@pytest.fixture
def node_dirs() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rtdra-dra-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def serve_plugin(
    api: client.ApiClient, node: str, d: Path, enforcer: Enforcer, state: ClaimState, capacities: dict[int, int]
) -> DraPlugin:
    hook_dir = d / "hooks"
    cdi.install_hook(hook_dir)
    preparer = Preparer(
        state,
        ClaimReader(api),
        pool=node,
        capacities=capacities,
        cdi_dir=d / "cdi",
        hook_argv=cdi.hook_command(d / "agent.sock", hook_dir=hook_dir),
        release_claim=enforcer.release_claim,
    )
    plugin = DraPlugin(preparer, kubelet_root=d / "kubelet")
    plugin.start()
    return plugin


def test_kubelet_registers_the_plugin_and_prepares_and_unprepares_claims_on_v1_and_v1beta1(
    kube_api: client.ApiClient, make_node: Any, device_class: str, namespace: str, node_dirs: Path
) -> None:
    node = make_node()["metadata"]["name"]
    capacities = {0: CAPACITY, 1: CAPACITY}
    publisher = SlicePublisher(kube_api, node, lambda: devices_of(2))
    publisher.sync()
    state = ClaimState(node_dirs / "dra-claims.json")
    enforcer = Enforcer(
        FileStore(node, node_dirs / "nas.json"), NoneBackend(), LogEvents(), node_dirs / "prepared.json"
    )
    plugin = serve_plugin(kube_api, node, node_dirs, enforcer, state, capacities)
    try:
        kubelet = Kubelet(node_dirs / "kubelet" / "plugins_registry" / f"{dra.DRIVER}-reg.sock")
        info = kubelet.register()
        assert (info.type, info.name, list(info.supported_versions)) == (
            "DRAPlugin",
            dra.DRIVER,
            ["v1.DRAPlugin", "v1beta1.DRAPlugin"],
        )
        assert info.endpoint == str(node_dirs / "kubelet" / "plugins" / dra.DRIVER / "dra.sock")
        assert plugin.registered.is_set()

        two = allocate(kube_api, namespace, node, rt_claim("two", count=2), "p-two")
        uid = two["metadata"]["uid"]
        results = two["status"]["allocation"]["devices"]["results"]
        assert sorted(r["device"] for r in results) == ["cpu-0", "cpu-1"]  # N distinct CPUs
        assert all(
            dra.parse_quantity(r["consumedCapacity"][dra.CAPACITY]) == dra.capacity_request(RES) for r in results
        )

        claims = [(namespace, uid, "two"), (namespace, "no-such-uid", "two")]
        answer = kubelet.call(info, "v1", "NodePrepareResources", claims)
        mine = answer.claims[uid]
        assert mine.error == ""
        cdi_id = f"rt.resource.example.com/cpu=claim-{uid}-cpu"
        assert [(list(d.request_names), d.pool_name, list(d.cdi_device_ids)) for d in mine.devices] == [
            (["cpu"], node, [cdi_id]),
            (["cpu"], node, []),
        ]
        assert {d.device_name for d in mine.devices} == {"cpu-0", "cpu-1"}
        assert {d.share_id for d in mine.devices} == {r["shareID"] for r in results}
        assert "its uid is" in answer.claims["no-such-uid"].error  # one bad claim fails alone
        spec = json.loads(cdi.claim_spec_path(node_dirs / "cdi", uid).read_text())
        assert "RT_RUNTIME_NS=2000000" in spec["devices"][0]["containerEdits"]["env"]

        again = kubelet.call(info, "v1beta1", "NodePrepareResources", claims[:1])  # the same answer, other version
        assert [(d.device_name, list(d.cdi_device_ids)) for d in again.claims[uid].devices] == [
            (d.device_name, list(d.cdi_device_ids)) for d in mine.devices
        ]
        assert set(state.claims) == {uid}

        done = kubelet.call(info, "v1beta1", "NodeUnprepareResources", claims[:1])
        assert done.claims[uid].error == ""
        assert state.claims == {} and not cdi.claim_spec_path(node_dirs / "cdi", uid).exists()
        assert kubelet.call(info, "v1", "NodeUnprepareResources", claims[:1]).claims[uid].error == ""  # idempotent
    finally:
        plugin.stop()
        publisher.delete()
    assert not (node_dirs / "kubelet" / "plugins_registry" / f"{dra.DRIVER}-reg.sock").exists()


def test_a_claim_booked_below_its_reservation_is_refused_with_the_reason(
    kube_api: client.ApiClient, make_node: Any, device_class: str, namespace: str, node_dirs: Path
) -> None:
    node = make_node()["metadata"]["name"]
    publisher = SlicePublisher(kube_api, node, lambda: devices_of(1))
    publisher.sync()
    state = ClaimState(node_dirs / "dra-claims.json")
    enforcer = Enforcer(
        FileStore(node, node_dirs / "nas.json"), NoneBackend(), LogEvents(), node_dirs / "prepared.json"
    )
    plugin = serve_plugin(kube_api, node, node_dirs, enforcer, state, {0: CAPACITY})
    try:
        short = rt_claim("short")
        short["spec"]["devices"]["requests"][0]["exactly"]["capacity"]["requests"][dra.CAPACITY] = "1Ki"
        obj = allocate(kube_api, namespace, node, short, "p-short")
        kubelet = Kubelet(plugin.registry_socket)
        answer = kubelet.call(
            kubelet.register(), "v1", "NodePrepareResources", [(namespace, obj["metadata"]["uid"], "short")]
        )
        error = answer.claims[obj["metadata"]["uid"]].error
        assert "has 1024" in error and "capacity request must be at least" in error
        assert state.claims == {}
    finally:
        plugin.stop()
        publisher.delete()


# -- the kernel ---------------------------------------------------------------------------------------


@pytest.fixture
def kernel_turn() -> Iterator[int | None]:
    """The machine's deadline bandwidth, one test at a time (the kernel tests' lock); checked back after."""
    reason = kernel_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with open(KERNEL_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = host.root_domain_total_bw()
        yield before
        after = host.root_domain_total_bw()
        if before is not None and after != before:
            host.rebuild_root_domains()
            pytest.fail(f"deadline bandwidth leaked: total_bw {before} -> {after} (repaired)")


@pytest.mark.kernel
def test_a_prepared_claims_hook_puts_the_container_under_sched_deadline_and_unprepare_releases_it(
    kube_api: client.ApiClient,
    make_node: Any,
    device_class: str,
    namespace: str,
    node_dirs: Path,
    kernel_turn: int | None,
) -> None:
    node = make_node()["metadata"]["name"]
    cpus = host.online_cpus()
    measured = host.discover_capacity(cpus)
    capacities = {cpu: measured.per_cpu[cpu] for cpu in cpus}
    publisher = SlicePublisher(kube_api, node, lambda: [dra.CpuDevice(c, cap) for c, cap in capacities.items()])
    publisher.sync()
    state = ClaimState(node_dirs / "dra-claims.json")
    enforcer = Enforcer(
        FileStore(node, node_dirs / "nas.json"),
        DeadlineBackend(cpus),
        LogEvents(),
        node_dirs / "prepared.json",
        claim_slots=state.slots,
    )
    enforcer.load()
    hooks = HookServer(node_dirs / "agent.sock", enforcer)
    hooks.start()
    plugin = serve_plugin(kube_api, node, node_dirs, enforcer, state, capacities)
    container = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        params = {**PARAMS, "spec": {"runtime": 1000, "period": 10000, "deadline": 5000}}
        obj = allocate(kube_api, namespace, node, rt_claim("rt", parameters=params), "p-rt")
        uid = obj["metadata"]["uid"]
        kubelet = Kubelet(plugin.registry_socket)
        info = kubelet.register()
        prepared = kubelet.call(info, "v1", "NodePrepareResources", [(namespace, uid, "rt")]).claims[uid]
        assert prepared.error == ""
        (cdi_id,) = prepared.devices[0].cdi_device_ids

        # What runc does with the device kubelet named: run its createRuntime hook with the container's state.
        spec = json.loads(cdi.claim_spec_path(node_dirs / "cdi", uid).read_text())
        (device,) = [d for d in spec["devices"] if f"{spec['kind']}={d['name']}" == cdi_id]
        hook = next(h for h in device["containerEdits"]["hooks"] if h["hookName"] == "createRuntime")
        oci_state = {
            "ociVersion": "1.2.0",
            "id": "ctr-1",
            "status": "created",
            "pid": container.pid,
            "bundle": "/nonexistent",
            "annotations": {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.sandbox-uid": "pod-uid-1",
                "io.kubernetes.cri.sandbox-namespace": namespace,
                "io.kubernetes.cri.sandbox-name": "p-rt",
                "io.kubernetes.cri.container-name": "app",
            },
        }
        run = subprocess.run(
            [hook["path"], *hook["args"][1:]],
            input=json.dumps(oci_state).encode(),
            capture_output=True,
            env={},
            check=False,
        )
        assert run.returncode == 0, run.stderr.decode()
        attr = sched.sched_getattr(container.pid)
        assert attr.is_deadline
        assert (attr.runtime_ns, attr.deadline_ns, attr.period_ns) == (1_000_000, 5_000_000, 10_000_000)

        done = kubelet.call(info, "v1", "NodeUnprepareResources", [(namespace, uid, "rt")]).claims[uid]
        assert done.error == ""
        assert sched.sched_getattr(container.pid).policy == sched.SCHED_OTHER
        assert enforcer.applied == {}
    finally:
        container.kill()
        container.wait()
        plugin.stop()
        hooks.stop()
        publisher.delete()
