"""DRA mode on a real node: upstream kubelet + containerd + runc, the real kube-scheduler, real SCHED_DEADLINE.

The node's agent runs in ``--mode dra``: it publishes the machine's CPUs as a ResourceSlice pool,
registers its DRA plugin with the real kubelet, and keeps its NAS NotReady (the extender books
nothing here). A pod with a ResourceClaim of the DeviceClass ``rt.resource.example.com`` is
allocated by kube-scheduler's DRA allocator (consumable capacity, on by default in v1.37), kubelet
calls the agent's ``NodePrepareResources``, hands containerd the claim's CDI device, runc runs its
hook, and the container runs under the claim's SCHED_DEADLINE. Deleting the pod has kubelet call
``NodeUnprepareResources``: the reservation, the CDI spec and the record go.

The claim's capacity request is written here explicitly (the cluster side's webhook fills it in
for users). Checked from outside the product: the pid from containerd, the attributes from the
kernel, the output from kubelet's log file, the allocation from the API.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from hack.stack import NodeSpec, Stack, wait_for
from rtdra import dra, host, sched
from tests.e2e.stacks import module_stack

pytestmark = [pytest.mark.e2e, pytest.mark.kernel, pytest.mark.slow]

NODE = NodeSpec("rt-node-0", "deadline", real=True, mode="dra")
RESOURCE = ("resource.k8s.io", "v1")


@pytest.fixture(scope="module")
def stack(k8s_binaries: Any, node_binaries: Any) -> Iterator[Stack]:
    yield from module_stack(k8s_binaries, [NODE], "rtdra-realnode-dra-")


@pytest.fixture
def ns(stack: Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    """A plain namespace: DRA pods need no opt-in (the webhook's routing is for extender-mode pods)."""
    core = client.CoreV1Api(stack.api)
    name = "dra-" + request.node.name.replace("_", "-")[5:40].strip("-").lower()
    core.create_namespace({"metadata": {"name": name}})
    yield name
    for pod in core.list_namespaced_pod(name).items:
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(pod.metadata.name, name)
    wait_for(f"pods of {name} gone", lambda: not core.list_namespaced_pod(name).items, timeout=90)
    core.delete_namespace(name)


def rt_claim(name: str, runtime_us: int, period_us: int, deadline_us: int) -> dict[str, Any]:
    parameters = {
        "apiVersion": dra.PARAMETERS_API_VERSION,
        "kind": dra.PARAMETERS_KIND,
        "spec": {"runtime": runtime_us, "period": period_us, "deadline": deadline_us},
    }
    booked = dra.capacity_request(dra.reservation_from_parameters(parameters, name))
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
                            "count": 1,
                            "capacity": {"requests": {dra.CAPACITY: str(booked)}},
                        },
                    }
                ],
                "config": [{"opaque": {"driver": dra.DRIVER, "parameters": parameters}}],
            }
        },
    }


def claim_pod(stack: Stack, name: str, claim: str) -> dict[str, Any]:
    spec = stack.pod_spec([{"name": "app", "resources": {"claims": [{"name": "rt"}]}}])
    spec["resourceClaims"] = [{"name": "rt", "resourceClaimName": claim}]
    return {"metadata": {"name": name}, "spec": spec}


def running(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, ns)
    statuses = pod.status.container_statuses or []
    return pod if pod.status.phase == "Running" and statuses and all(s.state.running for s in statuses) else None


def free_bandwidth() -> int:
    """What the kernel still admits on this machine's root domain, measured by its own admission test."""
    return host.probe_free_bandwidth(host.online_cpus())


def state_dir(stack: Stack) -> Path:
    return stack.workdir / "nodes" / NODE.name / "state"


def test_the_node_publishes_its_measured_cpus_and_keeps_the_extender_out(stack: Stack) -> None:
    nas = stack.nas(NODE.name) or {}
    assert nas.get("status") == "NotReady"
    assert "node serves RT pods through DRA (DeviceClass rt.resource.example.com)" in nas.get("statusReason", "")
    measured = {e["rtcpu"]["id"]: e["rtcpu"]["capacity"] for e in nas["spec"]["allocatableCpuset"]}
    slices = client.CustomObjectsApi(stack.api).list_cluster_custom_object(
        *RESOURCE, "resourceslices", field_selector=f"spec.nodeName={NODE.name}"
    )["items"]
    (pool,) = slices
    assert pool["spec"]["driver"] == dra.DRIVER and pool["spec"]["pool"]["name"] == NODE.name
    published = {
        dra.cpu_of_device(d["name"]): int(d["capacity"][dra.CAPACITY]["value"]) for d in pool["spec"]["devices"]
    }
    assert published == measured and set(published) == set(host.online_cpus())
    assert all(d["allowMultipleAllocations"] for d in pool["spec"]["devices"])


def test_a_pod_with_a_claim_runs_under_its_deadline_reservation_and_deleting_it_releases_everything(
    stack: Stack, ns: str
) -> None:
    core = client.CoreV1Api(stack.api)
    objects = client.CustomObjectsApi(stack.api)
    before = free_bandwidth()
    objects.create_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", rt_claim("rt", 2000, 10000, 8000))
    core.create_namespaced_pod(ns, claim_pod(stack, "dl", "rt"))
    pod = wait_for("dl running", lambda: running(core, ns, "dl"), timeout=180)
    assert pod.spec.node_name == NODE.name

    claim = objects.get_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", "rt")
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (result["driver"], result["pool"]) == (dra.DRIVER, NODE.name)
    cpu = dra.cpu_of_device(result["device"])
    booked = dra.parse_quantity(result["consumedCapacity"][dra.CAPACITY])
    assert booked == 2000 * (1 << 20) // 8000  # runtime/deadline: the density the constrained deadline needs
    assert [r["uid"] for r in claim["status"]["reservedFor"]] == [pod.metadata.uid]

    real = stack.real[NODE.name]
    pid = real.container_pid(pod, "app")
    assert pid
    attr = sched.sched_getattr(pid)
    assert attr.is_deadline, f"pid {pid} runs policy {attr.policy}, not SCHED_DEADLINE"
    assert (attr.runtime_ns, attr.deadline_ns, attr.period_ns) == (2_000_000, 8_000_000, 10_000_000)
    log = wait_for("container output", lambda: real.container_log(pod, "app"), timeout=30)
    assert "RT_RUNTIME_NS=2000000" in log and "RT_DEADLINE_NS=8000000" in log
    prepared = json.loads((state_dir(stack) / "dra-claims.json").read_text())["claims"]
    assert [d["device"] for d in prepared[claim["metadata"]["uid"]]["requests"][0]["devices"]] == [f"cpu-{cpu}"]
    spec = real.cdi_dir / f"rt.resource.example.com-cpu-claim-{claim['metadata']['uid']}.json"
    assert spec.exists()
    applied = wait_for(
        "the agent's record in the NAS",
        lambda: ((stack.nas(NODE.name) or {})["spec"].get("preparedClaims") or {}).get(pod.metadata.uid),
        timeout=30,
    )["containers"]["app"]
    assert applied["pid"] == pid and applied["claim"] == f"{claim['metadata']['uid']}/cpu"

    core.delete_namespaced_pod("dl", ns)
    wait_for("dl deleted", lambda: "dl" not in {p.metadata.name for p in core.list_namespaced_pod(ns).items})
    wait_for(
        "the claim unprepared",
        lambda: json.loads((state_dir(stack) / "dra-claims.json").read_text())["claims"] == {},
        timeout=60,
    )
    assert not spec.exists()
    wait_for("the agent's record gone", lambda: not (stack.nas(NODE.name) or {})["spec"]["preparedClaims"], timeout=30)
    wait_for("the kernel's free bandwidth back", lambda: free_bandwidth() == before, timeout=30)


def test_a_restarted_agent_keeps_the_prepared_claim_and_unprepares_it_when_the_pod_goes(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    objects = client.CustomObjectsApi(stack.api)
    objects.create_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", rt_claim("kept", 1000, 5000, 5000))
    core.create_namespaced_pod(ns, claim_pod(stack, "kept", "kept"))
    pod = wait_for("kept running", lambda: running(core, ns, "kept"), timeout=180)
    real = stack.real[NODE.name]
    pid = real.container_pid(pod, "app")
    assert pid
    uid = objects.get_namespaced_custom_object(*RESOURCE, ns, "resourceclaims", "kept")["metadata"]["uid"]

    log_name = f"agent-{NODE.name}"
    stack.stop_process(log_name)  # SIGTERM: the pool is deleted, the plugin's sockets go
    assert sched.sched_getattr(pid).is_deadline  # the reservation outlives the agent
    mark = len(stack.log_tail(log_name, 100000).splitlines())
    stack.start_agent(NODE)

    def registered_again() -> bool:
        after = stack.log_tail(log_name, 100000).splitlines()[mark:]
        return any("kubelet registered the DRA plugin" in line for line in after) and stack.dra_ready(NODE.name)

    wait_for("the DRA plugin registered again, the pool back", registered_again, timeout=60)
    prepared = json.loads((state_dir(stack) / "dra-claims.json").read_text())["claims"]
    assert set(prepared) == {uid}
    attr = sched.sched_getattr(pid)
    assert attr.is_deadline and (attr.runtime_ns, attr.period_ns) == (1_000_000, 5_000_000)

    core.delete_namespaced_pod("kept", ns)
    wait_for(
        "the claim unprepared by the restarted agent",
        lambda: json.loads((state_dir(stack) / "dra-claims.json").read_text())["claims"] == {},
        timeout=90,
    )
    wait_for("the agent's record gone", lambda: not (stack.nas(NODE.name) or {})["spec"]["preparedClaims"], timeout=30)
