"""The agent as an NRI plugin of a real containerd: reservations with no hook process at all.

A private containerd (``hack.runtime.Containerd``: NRI on, its socket in its work dir, runc)
runs pods through its CRI with ``crictl``, as kubelet would; a real ``rtdra-agent --mode nri``
(backend ``deadline``, NAS in a file) is connected to containerd's NRI socket. The pods carry the
allocation annotation the extender writes at bind; no CDI device, so no hook can run - and the
test checks the container's OCI spec has none. The container's first process must be
SCHED_DEADLINE with the allocation's parameters (``sched_getattr``), released when the container
stops; an agent restart, a container started while the agent was away and a hung agent are
reconciled. Real-kernel work holds the kernel-test lock; no deadline task, process, cgroup or
mount is left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack.runtime import Containerd, ContainerdError
from rtdra import host, names, sched
from rtdra.ledger import NodeLedger, PodAllocation, Slot, allocation_annotation

#: Any slot: the allocation annotation only marks a container as RT; the NAS decides what is applied.
FORGED_SLOT = Slot(0, 1_000_000, 10_000_000, 10_000_000)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
LOCK_FILE = (
    Path("/run/lock/rtdra-kernel-tests.lock") if Path("/run/lock").is_dir() else Path("/tmp/rtdra-kernel-tests.lock")
)
SLOT = Slot(0, 2_000_000, 10_000_000, 10_000_000)


@pytest.fixture
def kernel_turn() -> Iterator[None]:
    """Real reservations: one kernel test at a time on this machine (tests/kernel/conftest.py's lock)."""
    if not sched.deadline_supported():
        pytest.skip("the kernel has no SCHED_DEADLINE")
    with open(LOCK_FILE, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        before = host.root_domain_total_bw()
        try:
            yield
        finally:
            after = host.root_domain_total_bw()
            for _ in range(100):
                if after == before:
                    break
                time.sleep(0.02)
                after = host.root_domain_total_bw()
            fcntl.flock(f, fcntl.LOCK_UN)
        assert after == before, f"deadline bandwidth leaked: total_bw {before} -> {after}"


class Agent:
    def __init__(self, base: Path, nri_socket: Path) -> None:
        self.node = f"n-{uuid.uuid4().hex[:6]}"
        self.base = base
        self.nas = base / "nas.json"
        self.state = base / "agent-state"
        self.nri_socket = nri_socket
        self.proc: subprocess.Popen[bytes] | None = None
        self.nas.write_text(json.dumps(NodeLedger(self.node, {0: 1 << 19, 1: 1 << 19}).to_nas()))

    def allocate(self, uid: str, container: str, slot: Slot) -> str:
        """Reserve in the NAS (as the extender does) and return the pod's allocation annotation."""
        ledger = NodeLedger.from_nas(json.loads(self.nas.read_text()))
        pods = {**ledger.pods, uid: PodAllocation(uid, "default", "p", {container: (slot,)})}
        self.nas.write_text(json.dumps(NodeLedger(self.node, ledger.capacities, pods, ledger.prepared).to_nas()))
        return allocation_annotation(pods[uid], self.node)

    def start(self, *extra: str) -> None:
        argv = [sys.executable, "-m", "agent.cli", "--node-name", self.node, "--nas-file", str(self.nas)]
        argv += ["--state-dir", str(self.state), "--no-cdi", "--hook-dir", str(self.base / "hooks")]
        argv += ["--mode", "nri", "--nri-socket", str(self.nri_socket), "--reconcile-interval", "0.5"]
        argv += ["--no-device-plugin", *extra]  # kubelet's device-plugin directory is fixed per host
        seen = len(self.log())
        with open(self.base / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: "NRI: synchronized" in self.log()[seen:], 30, "the agent to synchronize with containerd")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        with contextlib.suppress(FileNotFoundError):
            return (self.base / "agent.log").read_text()
        return ""

    def records(self) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError):
            return dict(json.loads((self.state / "prepared.json").read_text()))
        return {}


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="rtdra-nri-"))  # short: containerd's shim socket dir must stay under 42 chars
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def node(node_binaries: Any, node_image: Any, base: Path, kernel_turn: None) -> Iterator[tuple[Containerd, Agent]]:
    ctd = Containerd(base / "ctd", node_binaries, image=node_image)
    agent = Agent(base, ctd.nri_socket)
    try:
        ctd.start()
        agent.start("--release-on-exit")
        yield ctd, agent
    finally:
        agent.stop()
        ctd.stop()


def run_pod(ctd: Containerd, base: Path, uid: str, annotation: str | None, *, start: bool = True) -> tuple[str, str]:
    """A pod (with the allocation annotation) and its container ``rt``; returns their ids."""
    name = f"p-{uid[:8]}"
    pod: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "default", "uid": uid, "attempt": 0},
        "log_directory": str(base / "logs" / name),
        "linux": {"cgroup_parent": ctd.cgroup_parent, "security_context": {"namespace_options": {"network": 0}}},
        "annotations": {names.ALLOCATION: annotation} if annotation else {},
    }
    assert ctd.image is not None
    container = {
        "metadata": {"name": "rt"},
        "image": {"image": ctd.image.name},
        "command": ["/bin/sh", "-c", "exec sleep 3600"],
        "log_path": "rt/0.log",
        "linux": {},
    }
    pod_json, ctr_json = base / f"{name}-pod.json", base / f"{name}-ctr.json"
    pod_json.write_text(json.dumps(pod))
    ctr_json.write_text(json.dumps(container))
    pod_id = ctd.crictl("runp", str(pod_json)).strip()
    ctr_id = ctd.crictl("create", pod_id, str(ctr_json), str(pod_json)).strip()
    if start:
        ctd.crictl("start", ctr_id)
    return pod_id, ctr_id


def inspect(ctd: Containerd, ctr_id: str) -> dict[str, Any]:
    return dict(json.loads(ctd.crictl("inspect", "-o", "json", ctr_id)))


def policy(pid: int) -> tuple[int, int, int, int, bool]:
    attr = sched.sched_getattr(pid)
    return attr.policy, attr.runtime_ns, attr.deadline_ns, attr.period_ns, attr.reset_on_fork


def test_a_container_is_reserved_over_nri_with_no_hook_in_its_oci_spec(
    node: tuple[Containerd, Agent], base: Path
) -> None:
    ctd, agent = node
    uid = uuid.uuid4().hex
    _, ctr_id = run_pod(ctd, base, uid, agent.allocate(uid, "rt", SLOT))
    info = inspect(ctd, ctr_id)["info"]
    pid = int(info["pid"])
    assert policy(pid) == (sched.SCHED_DEADLINE, 2_000_000, 10_000_000, 10_000_000, True)
    spec = info["runtimeSpec"]
    assert not spec.get("hooks"), f"the OCI spec has hooks: {spec.get('hooks')}"
    env = spec["process"]["env"]
    assert {"RT_RUNTIME_NS=2000000", "RT_DEADLINE_NS=10000000", "RT_PERIOD_NS=10000000", "RT_CPUS=1"} <= set(env)
    assert agent.records()[uid]["containers"]["rt"]["containerID"] == ctr_id

    ctd.crictl("stop", "--timeout", "0", ctr_id)
    wait_for(lambda: uid not in agent.records(), 10, "the release at StopContainer")


def test_a_container_without_an_allocation_is_not_started(node: tuple[Containerd, Agent], base: Path) -> None:
    ctd, agent = node
    uid = uuid.uuid4().hex
    forged = allocation_annotation(PodAllocation(uid, "default", "p", {"rt": (FORGED_SLOT,)}), agent.node)
    _, ctr_id = run_pod(ctd, base, uid, forged, start=False)
    with pytest.raises(ContainerdError, match="no RT-DRA allocation"):
        ctd.crictl("start", ctr_id)


def test_agent_restart_and_a_container_started_while_it_was_away_are_reconciled(
    node: tuple[Containerd, Agent], base: Path
) -> None:
    ctd, agent = node
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    _, kept = run_pod(ctd, base, first, agent.allocate(first, "rt", SLOT))
    kept_pid = int(inspect(ctd, kept)["info"]["pid"])
    agent.stop()  # with --release-on-exit: everything is given back
    assert policy(kept_pid)[0] == sched.SCHED_OTHER
    # Away: containerd starts the next container without us (it runs unreserved meanwhile).
    _, late = run_pod(ctd, base, second, agent.allocate(second, "rt", Slot(1, 2_000_000, 10_000_000, 10_000_000)))
    late_pid = int(inspect(ctd, late)["info"]["pid"])
    assert policy(late_pid)[0] == sched.SCHED_OTHER
    agent.start("--release-on-exit")  # Synchronize: both running RT containers are reserved
    assert policy(kept_pid)[0] == sched.SCHED_DEADLINE
    assert policy(late_pid)[0] == sched.SCHED_DEADLINE


def test_a_hung_agent_never_holds_containerd_beyond_its_request_timeout(
    node: tuple[Containerd, Agent], base: Path
) -> None:
    ctd, agent = node
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGSTOP)
    uid = uuid.uuid4().hex
    try:
        started = time.monotonic()
        _, ctr_id = run_pod(ctd, base, uid, agent.allocate(uid, "rt", SLOT))
        elapsed = time.monotonic() - started
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    # CreateContainer waits at most the request timeout (2 s), then containerd drops the plugin.
    assert elapsed < 2.0 + 5.0, f"creating and starting took {elapsed:.1f} s"
    pid = int(inspect(ctd, ctr_id)["info"]["pid"])
    # Back, the agent dials again; the Synchronize that follows reserves what started meanwhile.
    wait_for(lambda: policy(pid)[0] == sched.SCHED_DEADLINE, 30, "the reservation after the agent came back")


def test_a_containerd_restart_is_followed_by_a_new_connection_and_a_synchronize(
    node: tuple[Containerd, Agent], base: Path
) -> None:
    ctd, agent = node
    uid = uuid.uuid4().hex
    _, ctr_id = run_pod(ctd, base, uid, agent.allocate(uid, "rt", SLOT))
    pid = int(inspect(ctd, ctr_id)["info"]["pid"])
    synced = agent.log().count("NRI: synchronized")
    ctd.restart()  # the container keeps running under its shim, and keeps its reservation
    wait_for(lambda: agent.log().count("NRI: synchronized") > synced, 30, "the agent to synchronize again")
    assert policy(pid)[0] == sched.SCHED_DEADLINE
    assert agent.records()[uid]["containers"]["rt"]["pid"] == pid  # kept, not applied twice
    ctd.crictl("stop", "--timeout", "0", ctr_id)  # events flow over the new connection
    wait_for(lambda: uid not in agent.records(), 10, "the release at StopContainer after the restart")
