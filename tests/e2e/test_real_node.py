"""RT pods on a real node: upstream kubelet + containerd + runc on this machine, real SCHED_DEADLINE.

The whole path a user's pod takes, with nothing simulated: the webhook admits
and routes it, kube-scheduler asks the extender, kubelet admits it and asks
the agent's device plugin for ``rt.resource.example.com/dl``, and the agent
puts the container's process under SCHED_DEADLINE before its program starts.
Every test runs in both of the agent's modes:

- ``cdi``: the device plugin's ``Allocate`` hands the container the CDI device,
  containerd applies the CDI spec and runc runs its ``createRuntime`` hook,
  which asks the agent (the path every CDI runtime has);
- ``nri``: the slot comes without the device; containerd tells the agent
  (NRI StartContainer) before it starts the container, no hook process runs.

Everything is checked from
outside the product: the container's host pid comes from containerd, its
scheduling attributes from the kernel (``sched_getattr``), its output from the
log file kubelet writes, the bandwidth from the kernel's own admission.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from kubernetes import client

from hack.procs import pid_alive
from hack.stack import NodeSpec, Stack, wait_for
from rtdra import host, names, sched
from rtdra.bandwidth import BW_UNIT, bandwidth
from tests.e2e.stacks import module_stack, opted_in_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.kernel, pytest.mark.slow]

NODE = NodeSpec("rt-node-0", "deadline", real=True)
MODES = ("cdi", "nri")
FAST_RECONCILE = ("--reconcile-interval-seconds", "2")


@pytest.fixture(scope="module", params=MODES)
def stack(request: pytest.FixtureRequest, k8s_binaries: Any, node_binaries: Any) -> Iterator[Stack]:
    node = replace(NODE, mode=request.param)
    yield from module_stack(k8s_binaries, [node], "rtdra-realnode-", extender_args=FAST_RECONCILE)


@pytest.fixture
def ns(stack: Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "real-" + request.node.name.replace("_", "-")[5:40].strip("-").lower()
    yield from opted_in_namespace(stack, name, drain_timeout=90)


def rt_pod(stack: Stack, name: str, value: str | None, command: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app"}
    if command is not None:
        container["command"] = command
    return {
        "metadata": {"name": name, "annotations": {f"{names.CONTAINER_PREFIX}app": value} if value else {}},
        "spec": stack.pod_spec([container]),
    }


def running(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, ns)
    statuses = pod.status.container_statuses or []
    return pod if pod.status.phase == "Running" and statuses and all(s.state.running for s in statuses) else None


def events_of(core: client.CoreV1Api, ns: str, name: str) -> list[str]:
    return [f"{e.reason}: {e.message}" for e in core.list_namespaced_event(ns).items if e.involved_object.name == name]


def prepared(stack: Stack, pod: client.V1Pod) -> dict[str, Any] | None:
    """The agent's record of ``pod`` in the NAS, once published (just after the hook was answered)."""
    record = ((stack.nas(NODE.name) or {})["spec"].get("preparedClaims") or {}).get(pod.metadata.uid)
    return record if isinstance(record, dict) else None


def container_pid(stack: Stack, pod: client.V1Pod) -> int:
    pid = stack.real[NODE.name].container_pid(pod, "app")
    assert pid, f"containerd knows no running process for {pod.metadata.name}"
    return pid


def assert_deadline(pid: int, runtime_ns: int, deadline_ns: int, period_ns: int) -> None:
    attr = sched.sched_getattr(pid)
    assert attr.is_deadline, f"pid {pid} runs policy {attr.policy}, not SCHED_DEADLINE"
    assert (attr.runtime_ns, attr.deadline_ns, attr.period_ns) == (runtime_ns, deadline_ns, period_ns)


def free_bandwidth() -> int:
    """What the kernel still admits on this machine's root domain, measured by its own admission test."""
    return host.probe_free_bandwidth(host.online_cpus())


def test_an_rt_pod_runs_as_a_real_container_under_its_reservation(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    core.create_namespaced_pod(ns, rt_pod(stack, "ctl", "runtime=2ms,deadline=8ms,period=10ms"))
    pod = wait_for("ctl running", lambda: running(core, ns, "ctl"), timeout=120)
    assert pod.spec.node_name == NODE.name
    allocation = json.loads(pod.metadata.annotations[names.ALLOCATION])
    assert allocation["node"] == NODE.name
    pid = container_pid(stack, pod)
    assert_deadline(pid, 2_000_000, 8_000_000, 10_000_000)
    assert sched.sched_getattr(pid).flags & sched.SCHED_FLAG_RESET_ON_FORK
    # The environment came with it, and the program ran (read from kubelet's log file).
    log = wait_for("container output", lambda: stack.real[NODE.name].container_log(pod, "app"), timeout=30)
    assert "RT_RUNTIME_NS=2000000" in log and "RT_PERIOD_NS=10000000" in log
    # The agent's record names the same process.
    applied = wait_for("the agent's record in the NAS", lambda: prepared(stack, pod), timeout=30)["containers"]["app"]
    assert applied["pid"] == pid


def test_a_shell_entrypoint_that_forks_keeps_running_under_its_reservation(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    loop = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"
    core.create_namespaced_pod(ns, rt_pod(stack, "forks", "runtime=1ms,period=10ms", ["sh", "-c", loop]))
    pod = wait_for("forks running", lambda: running(core, ns, "forks"), timeout=120)
    pid = container_pid(stack, pod)
    real = stack.real[NODE.name]
    wait_for("ten forked sleeps", lambda: "tick 10" in real.container_log(pod, "app"), timeout=30)
    assert_deadline(pid, 1_000_000, 10_000_000, 10_000_000)  # the shell itself, still reserved
    pod = core.read_namespaced_pod("forks", ns)
    assert pod.status.container_statuses[0].restart_count == 0


def test_deleting_the_pod_gives_the_bandwidth_back_to_the_kernel(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    before = free_bandwidth()
    core.create_namespaced_pod(ns, rt_pod(stack, "gone", "runtime=3ms,period=10ms,cpus=2"))
    pod = wait_for("gone running", lambda: running(core, ns, "gone"), timeout=120)
    held = free_bandwidth()
    assert before - held >= bandwidth(3_000_000, 10_000_000), (before, held)
    pid = container_pid(stack, pod)
    core.delete_namespaced_pod("gone", ns)
    wait_for("gone deleted", lambda: "gone" not in {p.metadata.name for p in core.list_namespaced_pod(ns).items})
    assert not pid_alive(pid)
    wait_for("the kernel's free bandwidth back", lambda: free_bandwidth() == before, timeout=30)
    wait_for(
        "the ledger released",
        lambda: pod.metadata.uid not in (stack.nas(NODE.name) or {})["spec"].get("preparedClaims", {}),
    )


def test_restarting_the_agent_adopts_running_containers_without_applying_again(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    core.create_namespaced_pod(ns, rt_pod(stack, "kept", "runtime=1ms,period=5ms"))
    pod = wait_for("kept running", lambda: running(core, ns, "kept"), timeout=120)
    pid = container_pid(stack, pod)
    record = (stack.nas(NODE.name) or {})["spec"]["preparedClaims"][pod.metadata.uid]
    log_name = f"agent-{NODE.name}"
    stack.stop_process(log_name)
    assert_deadline(pid, 1_000_000, 5_000_000, 5_000_000)  # the reservation outlives the agent
    mark = len(stack.log_tail(log_name, 100000).splitlines())
    stack.start_agent(next(n for n in stack.nodes if n.real))  # the same spec, so the same mode
    wait_for("NAS Ready again", lambda: stack.nas_ready(NODE.name), timeout=60)
    wait_for("device plugin registered again", lambda: stack.offers(NODE.name), timeout=60)
    time.sleep(3)  # a reconcile round or more
    assert (stack.nas(NODE.name) or {})["spec"]["preparedClaims"][pod.metadata.uid] == record
    assert_deadline(pid, 1_000_000, 5_000_000, 5_000_000)
    after = stack.log_tail(log_name, 100000).splitlines()[mark:]
    assert not [line for line in after if "reserved on CPU" in line], after
    # A new RT pod still gets its reservation through the restarted agent and its device plugin.
    core.create_namespaced_pod(ns, rt_pod(stack, "after", "runtime=1ms,period=5ms"))
    after_pod = wait_for("after running", lambda: running(core, ns, "after"), timeout=120)
    assert_deadline(container_pid(stack, after_pod), 1_000_000, 5_000_000, 5_000_000)


class Filler:
    """Sleeping SCHED_DEADLINE tasks that take the kernel's free bandwidth behind the agent's back."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def take(self, bw: int, period_ns: int = 100_000_000) -> None:
        while bw > 0:
            share = min(bw, BW_UNIT)
            proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
            self.procs.append(proc)
            host.wait_blocked(proc.pid)
            runtime = max((share * period_ns) >> 20, 1024)
            sched.sched_setattr(proc.pid, sched.deadline(runtime, period_ns, period_ns))
            bw -= bandwidth(runtime, period_ns)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs.clear()


def test_a_kernel_refusal_keeps_the_container_from_running_unreserved(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    filler = Filler()
    try:
        free = free_bandwidth()
        filler.take(free - bandwidth(1_000_000, 10_000_000) // 2)  # leaves half of what the pod needs
        core.create_namespaced_pod(ns, rt_pod(stack, "refused", "runtime=1ms,period=10ms"))

        def refused() -> list[str]:
            return [e for e in events_of(core, ns, "refused") if e.startswith("KernelRefusedBandwidth")]

        event = wait_for("KernelRefusedBandwidth event", refused, timeout=120)[0]
        assert "EBUSY" in event
        # kubelet's own word comes once the runtime has failed the container's start (the agent's NRI answer)
        failed = wait_for(
            "kubelet's Failed event",
            lambda: [e for e in events_of(core, ns, "refused") if e.startswith("Failed:")],
            timeout=60,
        )
        # the agent's answer, through the hook (cdi) or over NRI
        assert any("rtdra-hook" in e or ("NRI" in e and "rtdra-agent" in e) for e in failed), failed
        pod = core.read_namespaced_pod("refused", ns)
        statuses = pod.status.container_statuses or []
        assert not any(s.state.running for s in statuses), statuses  # never ran without its guarantee
    finally:
        filler.close()
    # With the bandwidth back, kubelet's retry starts it, reserved.
    pod = wait_for("refused running after the filler left", lambda: running(core, ns, "refused"), timeout=180)
    assert_deadline(container_pid(stack, pod), 1_000_000, 10_000_000, 10_000_000)


def test_a_plain_pod_on_the_same_node_is_untouched(stack: Stack, ns: str) -> None:
    core = client.CoreV1Api(stack.api)
    core.create_namespaced_pod(ns, rt_pod(stack, "plain", None))
    pod = wait_for("plain running", lambda: running(core, ns, "plain"), timeout=120)
    assert pod.spec.node_name == NODE.name
    assert not any(k.startswith(names.PREFIX) for k in pod.metadata.annotations or {})
    assert names.DL_RESOURCE not in (pod.spec.containers[0].resources.limits or {})
    pid = container_pid(stack, pod)
    assert sched.sched_getattr(pid).policy == sched.SCHED_OTHER
    assert pod.metadata.uid not in (stack.nas(NODE.name) or {})["spec"].get("preparedClaims", {})
    assert "RT_" not in stack.real[NODE.name].container_log(pod, "app")


def test_a_pod_cannot_take_another_pods_reservation_through_runtime_annotations(stack: Stack, ns: str) -> None:
    """The agent names a container's pod by what the runtime says (containerd's own CRI annotations, or NRI's
    pod), never by annotations a user writes: a pod claiming to be another one gets its own reservation."""
    core = client.CoreV1Api(stack.api)
    core.create_namespaced_pod(ns, rt_pod(stack, "victim", "runtime=3ms,period=10ms"))
    victim = wait_for("victim running", lambda: running(core, ns, "victim"), timeout=120)
    victim_pid = container_pid(stack, victim)
    spoof = rt_pod(stack, "spoof", "runtime=1ms,period=10ms")
    spoof["metadata"]["annotations"].update(
        {
            "io.kubernetes.cri.sandbox-uid": victim.metadata.uid,
            "io.kubernetes.cri.sandbox-name": "victim",
            "io.kubernetes.cri.sandbox-namespace": ns,
            "io.kubernetes.pod.uid": victim.metadata.uid,
        }
    )
    core.create_namespaced_pod(ns, spoof)
    pod = wait_for("spoof running", lambda: running(core, ns, "spoof"), timeout=120)
    assert_deadline(container_pid(stack, pod), 1_000_000, 10_000_000, 10_000_000)  # its own, not the victim's
    assert_deadline(victim_pid, 3_000_000, 10_000_000, 10_000_000)
    prepared = (stack.nas(NODE.name) or {})["spec"]["preparedClaims"]
    assert prepared[victim.metadata.uid]["containers"]["app"]["pid"] == victim_pid
    assert prepared[pod.metadata.uid]["containers"]["app"]["pid"] == container_pid(stack, pod)
