"""The agent as an NRI plugin against the real kernel: same kernel state as the hook, no hook run.

A real ``rtdra-agent --mode nri`` (backend ``deadline``, NAS in a file) dials a unix socket this
test listens on; the test answers as the runtime (``hack/fake_nri.py``: registration, Configure,
Synchronize, events). Stand-in containers are sleeping processes. The kernel's deadline
accounting is checked to be back where it was (``dl_clean``), every process is killed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # hack/ is the harness, as in tests/e2e
    sys.path.insert(0, str(REPO))

from agent._generated.nri import api_pb2  # noqa: E402
from hack.fake_nri import CallFailed, FakeRuntime  # noqa: E402
from rtdra import host, names, sched  # noqa: E402
from rtdra.ledger import NodeLedger, PodAllocation, Slot, allocation_annotation  # noqa: E402
from tests.kernel.processes import SleepingProcesses  # noqa: E402

#: Any slot: the allocation annotation only marks a container as RT; the NAS decides what is applied.
FORGED_SLOT = Slot(0, 1_000_000, 10_000_000, 10_000_000)

pytestmark = pytest.mark.kernel

SLOT = Slot(0, 2_000_000, 5_000_000, 10_000_000)


class Runtime:
    """The listening end of the NRI socket; each accepted connection becomes a FakeRuntime."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.listener.settimeout(30)

    def accept(self) -> FakeRuntime:
        conn, _ = self.listener.accept()
        return FakeRuntime(conn)

    def close(self) -> None:
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Agent:
    def __init__(self, tmp: Path) -> None:
        self.node = f"n-{uuid.uuid4().hex[:6]}"
        self.tmp = tmp
        self.nas = tmp / "nas.json"
        self.state = tmp / "state"
        self.socket = tmp / "nri.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.nas.write_text(json.dumps(NodeLedger(self.node, {0: 1 << 19, 1: 1 << 19}).to_nas()))

    def allocate(self, uid: str, container: str, slots: tuple[Slot, ...]) -> None:
        ledger = NodeLedger.from_nas(json.loads(self.nas.read_text()))
        pods = {**ledger.pods, uid: PodAllocation(uid, "default", "p", {container: slots})}
        self.nas.write_text(json.dumps(NodeLedger(self.node, ledger.capacities, pods, ledger.prepared).to_nas()))

    def start(self, *extra: str) -> None:
        argv = [sys.executable, "-m", "agent.cli", "--node-name", self.node, "--nas-file", str(self.nas)]
        argv += [
            "--state-dir",
            str(self.state),
            "--cdi-dir",
            str(self.tmp / "cdi"),
            "--hook-dir",
            str(self.tmp / "hooks"),
        ]
        argv += ["--mode", "nri", "--nri-socket", str(self.socket), "--reconcile-interval", "0.2", "--no-device-plugin"]
        argv += extra  # never the device plugin: kubelet's directory is fixed per host (a real kubelet may run here)
        with open(self.tmp / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return (self.tmp / "agent.log").read_text()


Processes = SleepingProcesses


@pytest.fixture
def processes(dl_clean: int | None) -> Iterator[Processes]:
    pool = Processes()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def node(processes: Processes, tmp_path: Path) -> Iterator[tuple[Agent, Runtime]]:
    agent = Agent(tmp_path)
    runtime = Runtime(agent.socket)
    agent.start("--release-on-exit")
    try:
        yield agent, runtime
    finally:
        agent.stop()
        runtime.close()


def pod(uid: str) -> api_pb2.PodSandbox:
    # What bind writes (the NAS, not this, decides what is applied: it only marks the container as RT).
    allocation = allocation_annotation(PodAllocation(uid, "default", "p", {"rt": (FORGED_SLOT,)}), "n")
    return api_pb2.PodSandbox(
        id=f"sb-{uid}", uid=uid, name="p", namespace="default", annotations={names.ALLOCATION: allocation}
    )


def container(uid: str, pid: int, cid: str = "") -> api_pb2.Container:
    return api_pb2.Container(
        id=cid or f"ctr-{pid}", pod_sandbox_id=f"sb-{uid}", name="rt", pid=pid, state=api_pb2.CONTAINER_RUNNING
    )


def kernel_state(pid: int) -> list[tuple[int, int, int, int, bool, frozenset[int]]]:
    out = []
    for tid in sorted(sched.threads_of(pid)):
        attr = sched.sched_getattr(tid)
        out.append(
            (
                attr.policy,
                attr.runtime_ns,
                attr.deadline_ns,
                attr.period_ns,
                attr.reset_on_fork,
                sched.get_affinity(tid),
            )
        )
    return out


def test_start_container_reserves_every_allocated_task_in_process_and_stop_releases(
    node: tuple[Agent, Runtime], processes: Processes
) -> None:
    agent, listener = node
    agent.allocate("uid-n", "rt", (SLOT, Slot(1, 2_000_000, 5_000_000, 10_000_000)))
    pid = processes.start(threads=2)
    runtime = listener.accept()
    runtime.handshake()
    runtime.call(
        "StartContainer",
        api_pb2.StartContainerRequest(pod=pod("uid-n"), container=container("uid-n", pid)),
        api_pb2.Empty(),
    )
    everything = frozenset(host.online_cpus())
    assert kernel_state(pid) == [(sched.SCHED_DEADLINE, 2_000_000, 5_000_000, 10_000_000, True, everything)] * 2
    runtime.call(
        "StopContainer",
        api_pb2.StopContainerRequest(pod=pod("uid-n"), container=container("uid-n", pid)),
        api_pb2.StopContainerResponse(),
    )
    assert [s[0] for s in kernel_state(pid)] == [sched.SCHED_OTHER] * 2
    assert json.loads((agent.state / "prepared.json").read_text()) == {}
    assert "container starts come from the runtime over NRI" in agent.log()


def test_nri_and_the_hook_leave_the_same_kernel_state(node: tuple[Agent, Runtime], processes: Processes) -> None:
    agent, listener = node
    agent.allocate("uid-nri", "rt", (SLOT,))
    agent.allocate("uid-hook", "rt", (Slot(1, 2_000_000, 5_000_000, 10_000_000),))
    by_nri, by_hook = processes.start(), processes.start()
    sched.set_affinity(by_nri, frozenset({0}))  # narrower than the root domain: widened by both paths
    sched.set_affinity(by_hook, frozenset({0}))
    runtime = listener.accept()
    runtime.handshake()
    runtime.call(
        "StartContainer",
        api_pb2.StartContainerRequest(pod=pod("uid-nri"), container=container("uid-nri", by_nri)),
        api_pb2.Empty(),
    )
    state = {
        "ociVersion": "1.2.0", "id": f"ctr-{by_hook}", "status": "created", "pid": by_hook, "bundle": "/x",
        "annotations": {
            "io.kubernetes.cri.sandbox-uid": "uid-hook", "io.kubernetes.cri.sandbox-namespace": "default",
            "io.kubernetes.cri.sandbox-name": "p", "io.kubernetes.cri.container-name": "rt",
            "io.kubernetes.cri.container-type": "container",
        },
    }  # fmt: skip
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # the hook's own protocol (agent/hook.py)
        s.connect(str(agent.state / "agent.sock"))
        s.sendall(b"createRuntime\n" + json.dumps(state).encode())
        s.shutdown(socket.SHUT_WR)
        assert s.makefile("rb").read().startswith(b"ok ")
    assert kernel_state(by_nri) == kernel_state(by_hook)
    assert kernel_state(by_nri)[0][:5] == (sched.SCHED_DEADLINE, 2_000_000, 5_000_000, 10_000_000, True)


def test_a_refused_reservation_fails_the_start_and_leaves_nothing(
    node: tuple[Agent, Runtime], processes: Processes
) -> None:
    agent, listener = node
    agent.allocate(
        "uid-big", "rt", (Slot(0, 9_900_000, 10_000_000, 10_000_000), Slot(1, 9_900_000, 10_000_000, 10_000_000))
    )
    pid = processes.start(threads=2)
    runtime = listener.accept()
    runtime.handshake()
    with pytest.raises(CallFailed) as refused:
        runtime.call(
            "StartContainer",
            api_pb2.StartContainerRequest(pod=pod("uid-big"), container=container("uid-big", pid)),
            api_pb2.Empty(),
        )
    assert "Device or resource busy" in refused.value.message
    assert [s[0] for s in kernel_state(pid)] == [sched.SCHED_OTHER] * 2


def test_after_an_agent_restart_synchronize_keeps_what_runs_and_releases_what_went(
    processes: Processes, tmp_path: Path
) -> None:
    agent = Agent(tmp_path)
    listener = Runtime(agent.socket)
    try:
        agent.allocate("uid-a", "rt", (SLOT,))
        agent.allocate("uid-b", "rt", (Slot(1, 2_000_000, 5_000_000, 10_000_000),))
        a, b = processes.start(), processes.start()
        agent.start()  # no --release-on-exit: reservations outlive the agent
        runtime = listener.accept()
        runtime.handshake()
        for uid, pid in (("uid-a", a), ("uid-b", b)):
            runtime.call(
                "StartContainer",
                api_pb2.StartContainerRequest(pod=pod(uid), container=container(uid, pid)),
                api_pb2.Empty(),
            )
        agent.stop()
        runtime.close()
        assert [s[0] for s in kernel_state(a) + kernel_state(b)] == [sched.SCHED_DEADLINE] * 2

        agent.start("--release-on-exit")
        runtime = listener.accept()
        # While the agent was away the runtime stopped b's container: only a is listed.
        runtime.handshake(pods=[pod("uid-a"), pod("uid-b")], containers=[container("uid-a", a)])
        assert kernel_state(a)[0][0] == sched.SCHED_DEADLINE
        assert kernel_state(b)[0][0] == sched.SCHED_OTHER
        assert set(json.loads((agent.state / "prepared.json").read_text())) == {"uid-a"}
    finally:
        agent.stop()
        listener.close()
    assert kernel_state(a)[0][0] == sched.SCHED_OTHER  # --release-on-exit


def test_a_runtime_restart_is_followed_by_a_new_connection(node: tuple[Agent, Runtime], processes: Processes) -> None:
    agent, listener = node
    agent.allocate("uid-r", "rt", (SLOT,))
    first = listener.accept()
    first.handshake()
    first.close()  # the runtime went away
    pid = processes.start()
    started = time.monotonic()
    second = listener.accept()
    second.handshake(pods=[pod("uid-r")], containers=[container("uid-r", pid)])  # started while we were apart
    assert time.monotonic() - started < 5
    assert kernel_state(pid)[0][0] == sched.SCHED_DEADLINE
