"""The whole chain on the real control plane: webhook -> kube-scheduler + extender -> agent -> kernel.

One control plane with kube-controller-manager, the shipped manifests applied,
the components running under their ServiceAccounts' RBAC, three nodes: this
machine as a real node (kubelet + containerd + runc, ``deadline`` backend: real
SCHED_DEADLINE reservations on real containers) and two simulated ones, with the
node simulator standing in for kubelet + runtime there.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from hack.images import IMAGE_NAME
from hack.stack import NodeSpec, Stack, wait_for
from rtdra import names
from rtdra.ledger import NodeLedger
from rtdra.sched import sched_getattr
from tests.e2e.stacks import module_stack, opted_in_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.kernel, pytest.mark.slow]

REAL = NodeSpec("rt-node-0", "deadline", real=True)
NODES = (REAL, NodeSpec("sim-node-1", "none", cpus=2), NodeSpec("sim-node-2", "none", cpus=2))
#: Release the reservations of deleted pods within seconds, not the default 30 s.
FAST_RECONCILE = ("--reconcile-interval-seconds", "2")


@pytest.fixture(scope="module")
def stack(k8s_binaries: Any, node_binaries: Any) -> Iterator[Stack]:
    yield from module_stack(k8s_binaries, NODES, "rtdra-chain-", extender_args=FAST_RECONCILE)


@pytest.fixture
def ns(stack: Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "chain-" + request.node.name.replace("_", "-")[5:40].strip("-").lower()
    yield from opted_in_namespace(stack, name, drain_timeout=60)


def container(name: str) -> dict[str, Any]:
    """A container that runs on the real node too: the local image, never pulled, sleeping."""
    return {"name": name, "image": IMAGE_NAME, "imagePullPolicy": "Never", "command": ["sleep", "2147483647"]}


def rt_pod(name: str, value: str, containers: tuple[str, ...] = ("app",), **annotations: str) -> dict[str, Any]:
    notes = {f"{names.CONTAINER_PREFIX}{c}": value for c in containers}
    notes.update({k.replace("_", "-"): v for k, v in annotations.items()})
    return {
        "metadata": {"name": name, "annotations": notes},
        "spec": {"containers": [container(c) for c in containers], "terminationGracePeriodSeconds": 1},
    }


def running(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, ns)
    return pod if pod.status.phase == "Running" else None


def wait_running(stack: Stack, ns: str, name: str, timeout: float = 60) -> client.V1Pod:
    """The pod once Running; on timeout the error says where it is stuck (status, events, ledgers)."""
    core = client.CoreV1Api(stack.api)
    try:
        return wait_for(f"{name} running", lambda: running(core, ns, name), timeout=timeout)
    except TimeoutError as err:
        pod = core.read_namespaced_pod(name, ns)
        held = {
            node: sorted(f"{p.namespace}/{p.name}" for p in ledger.pods.values())
            for node, ledger in ledgers(stack).items()
        }
        raise AssertionError(
            f"{err}\nnode: {pod.spec.node_name}, phase: {pod.status.phase}\n"
            f"events: {events_of(core, ns, name)}\nledgers: {held}"
        ) from None


def events_of(core: client.CoreV1Api, ns: str, name: str) -> list[str]:
    return [f"{e.reason}: {e.message}" for e in core.list_namespaced_event(ns).items if e.involved_object.name == name]


def prepared(stack: Stack, node: str, pod: client.V1Pod) -> dict[str, Any] | None:
    """The agent's record of ``pod`` in ``node``'s NAS, once published (just after the hook was answered)."""
    record = ((stack.nas(node) or {})["spec"].get("preparedClaims") or {}).get(pod.metadata.uid)
    return record if isinstance(record, dict) else None


def ledgers(stack: Stack) -> dict[str, NodeLedger]:
    return {n.name: NodeLedger.from_nas(stack.nas(n.name) or {}) for n in NODES}


def assert_ledgers_consistent(stack: Stack) -> None:
    """Every reservation belongs to a live pod bound to that node, and no CPU is over capacity."""
    core = client.CoreV1Api(stack.api)
    pods = {p.metadata.uid: p for p in core.list_pod_for_all_namespaces().items}
    for node, ledger in ledgers(stack).items():
        for cpu in ledger.cpus:
            assert ledger.used(cpu) <= ledger.capacities[cpu], (node, cpu)
        for uid, held in ledger.pods.items():
            assert uid in pods, f"{node} holds a reservation for a pod that is gone: {held.namespace}/{held.name}"
            assert pods[uid].spec.node_name in (None, node)


def test_rt_pods_are_placed_reserved_in_the_kernel_and_recorded(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    core.create_namespaced_pod(ns, rt_pod("ctl", "runtime=1ms,period=10ms,cpus=2", placement="pack"))
    pod = wait_for("ctl running", lambda: running(core, ns, "ctl"))
    annotations = pod.metadata.annotations
    # the webhook normalised and routed it
    assert json.loads(annotations[names.SPEC]) == {
        "app": {"runtime": 1_000_000, "deadline": 10_000_000, "period": 10_000_000, "cpus": 2}
    }
    assert pod.spec.containers[0].resources.limits[names.DL_RESOURCE] == "1"
    # the extender bound it and recorded the CPUs, in the pod and in the node's ledger
    allocation = json.loads(annotations[names.ALLOCATION])
    node = pod.spec.node_name
    assert allocation["node"] == node
    cpus = allocation["containers"]["app"]["cpus"]
    assert len(set(cpus)) == 2
    held = ledgers(stack)[node].pods[pod.metadata.uid]
    assert list(held.cpus_of("app")) == cpus
    # the agent applied it; on this machine the kernel holds the reservation
    record = wait_for("the agent's record in the NAS", lambda: prepared(stack, node, pod), timeout=30)
    applied = record["containers"]["app"]
    assert sorted(slot["id"] for slot in applied["slots"]) == sorted(cpus)
    if node == REAL.name:
        assert applied["backend"] == "deadline" and applied["tasks"], applied
        # The container's process as containerd knows it runs under the first slot. (The hook runs while
        # the process is still runc's init: a second slot may sit on one of its threads, which ends at
        # exec; the agent's reconcile loop gives that slot to the next thread the program starts.)
        pid = stack.real[REAL.name].container_pid(pod, "app")
        assert pid == applied["pid"]
        attr = sched_getattr(pid)
        assert attr.is_deadline
        assert (attr.runtime_ns, attr.deadline_ns, attr.period_ns) == (1_000_000, 10_000_000, 10_000_000)
    else:
        assert applied["backend"] == "none"  # a simulated node: accounting only


def test_the_real_node_reserves_in_the_kernel(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    pod = rt_pod("onreal", "runtime=500us,deadline=2ms,period=5ms")
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": REAL.name}
    core.create_namespaced_pod(ns, pod)
    got = wait_for("onreal running", lambda: running(core, ns, "onreal"))
    assert got.spec.node_name == REAL.name
    record = wait_for("the agent's record in the NAS", lambda: prepared(stack, REAL.name, got), timeout=30)
    applied = record["containers"]["app"]
    tids = [int(t["tid"]) for t in applied["tasks"]]
    assert tids
    for tid in tids:
        attr = sched_getattr(tid)
        assert (attr.is_deadline, attr.runtime_ns, attr.deadline_ns, attr.period_ns) == (
            True,
            500_000,
            2_000_000,
            5_000_000,
        )
    # Its containerd offers NRI, so the agent reserved it in its own process: no hook was run.
    assert "container starts come from the runtime over NRI" in (stack.logs / f"agent-{REAL.name}.log").read_text()
    core.delete_namespaced_pod("onreal", ns)
    wait_for("onreal gone", lambda: "onreal" not in {p.metadata.name for p in core.list_namespaced_pod(ns).items})
    for tid in tids:  # the container's processes are gone with the pod
        with pytest.raises(OSError):
            sched_getattr(tid)
    wait_for("released", lambda: got.metadata.uid not in ledgers(stack)[REAL.name].pods)


def test_a_pod_too_big_for_every_node_stays_pending_with_our_reason(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    core.create_namespaced_pod(ns, rt_pod("huge", "runtime=9ms,period=10ms,cpus=3"))

    def reason() -> str | None:
        found = [e for e in events_of(core, ns, "huge") if e.startswith("FailedScheduling")]
        return found[-1] if found else None

    message = wait_for("FailedScheduling event", reason)
    assert "insufficient deadline bandwidth" in message
    # (the extender writes "percent": kube-scheduler uses reasons as Go format strings)
    assert "the pod needs 270.0 percent of a CPU in all, node has 180.0 percent left" in message
    assert core.read_namespaced_pod("huge", ns).spec.node_name is None


def test_deleting_pods_frees_bandwidth_for_a_pending_pod(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    # each takes 60% of both CPUs of a node: one per node, three nodes
    for i in range(3):
        core.create_namespaced_pod(ns, rt_pod(f"big-{i}", "runtime=6ms,period=10ms,cpus=2"))
    for i in range(3):
        wait_running(stack, ns, f"big-{i}")
    core.create_namespaced_pod(ns, rt_pod("waiting", "runtime=6ms,period=10ms,cpus=2"))
    wait_for("waiting rejected", lambda: any(e.startswith("FailedScheduling") for e in events_of(core, ns, "waiting")))
    freed = core.read_namespaced_pod("big-1", ns).spec.node_name
    core.delete_namespaced_pod("big-1", ns)
    pod = wait_running(stack, ns, "waiting", timeout=120)
    assert pod.spec.node_name == freed
    assert_ledgers_consistent(stack)


def test_pods_without_rt_request_are_untouched(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    core.create_namespaced_pod(ns, {"metadata": {"name": "plain"}, "spec": {"containers": [container("a")]}})
    pod = wait_for("plain running", lambda: running(core, ns, "plain"))
    assert not any(k.startswith(names.PREFIX) for k in pod.metadata.annotations or {})
    assert names.DL_RESOURCE not in (pod.spec.containers[0].resources.limits or {})
    assert all(pod.metadata.uid not in ledger.pods for ledger in ledgers(stack).values())


def test_an_invalid_request_is_denied_at_admission_with_our_message(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod(ns, rt_pod("bad", "runtime=20ms,period=10ms"))
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert 'container "app", runtime: must not exceed the period, got runtime 20ms > period 10ms' in message


def test_an_extender_restart_mid_stream_loses_and_leaks_nothing(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    for i in range(6):
        core.create_namespaced_pod(ns, rt_pod(f"s-{i}", "runtime=1ms,period=10ms"))
        if i == 2:
            stack.restart_extender(signal.SIGKILL)
    pods = wait_for(
        "all six running",
        lambda: all(running(core, ns, f"s-{i}") for i in range(6)) and core.list_namespaced_pod(ns).items,
        timeout=180,
    )
    held = {uid for ledger in ledgers(stack).values() for uid in ledger.pods}
    for pod in pods:
        assert pod.metadata.uid in held
        allocation = json.loads(pod.metadata.annotations[names.ALLOCATION])
        assert allocation["node"] == pod.spec.node_name
    assert_ledgers_consistent(stack)
