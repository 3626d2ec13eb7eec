"""The node agent and its hook against the real kernel.

Stand-in containers are processes the test starts in a cpuset cgroup it
creates; the agent runs as a real ``rtdra-agent`` process (NAS in a file, no
control plane) and installs its hook into a hook directory; the hook is run
exactly as a runtime (and ``hack/nodesim.py``) runs it: the CDI spec's
``path`` executed with its ``args``, no environment but the hook's own, an
OCI state document on stdin - under a "host" Python other than the agent's
where this machine has one. Every process, cgroup and cpuset is removed and
the kernel's deadline accounting is checked to be back where it was.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cpuset import Partitions
from agent.latency import effective_latency_us
from agent.store import FileStore
from rtdra import host, sched, tasks
from rtdra.ledger import NodeLedger, PodAllocation, Slot
from tests.kernel.processes import SleepingProcesses

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
#: The "host's" interpreter for the hook: the oldest other CPython here (a node's may be as old as 3.6).
HOST_PYTHON = next(
    (
        str(p)
        for p in sorted(
            Path.home().glob(".pyenv/versions/3.*/bin/python3"),
            key=lambda p: tuple(int(n) for n in p.parts[-3].split(".") if n.isdigit()),
        )
    ),
    "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable,
)
CPUSET = Path("/sys/fs/cgroup/cpuset")


def oci_state(pid: int, uid: str, container: str, *, crio: bool = False) -> bytes:
    if crio:
        annotations = {
            "io.kubernetes.pod.uid": uid,
            "io.kubernetes.pod.namespace": "default",
            "io.kubernetes.pod.name": "p",
            "io.kubernetes.container.name": container,
            "io.kubernetes.cri-o.ContainerType": "container",
        }
    else:
        annotations = {
            "io.kubernetes.cri.sandbox-uid": uid,
            "io.kubernetes.cri.sandbox-namespace": "default",
            "io.kubernetes.cri.sandbox-name": "p",
            "io.kubernetes.cri.container-name": container,
            "io.kubernetes.cri.container-type": "container",
        }
    state = {"ociVersion": "1.2.0", "id": f"ctr-{pid}", "status": "created", "pid": pid, "bundle": "/x"}
    return json.dumps({**state, "annotations": annotations}).encode()


class Containers(SleepingProcesses):
    """Stand-in containers: processes in a cpuset cgroup made for the test."""

    def __init__(self) -> None:
        self.cgroup = CPUSET / f"rtdra-test-{uuid.uuid4().hex[:8]}"
        self.cgroup.mkdir()
        for name in ("cpuset.cpus", "cpuset.mems"):
            (self.cgroup / name).write_text((CPUSET / name).read_text())
        super().__init__()

    def placed(self, pid: int) -> None:
        (self.cgroup / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        super().close()
        for _ in range(100):
            try:
                self.cgroup.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"could not remove {self.cgroup}")


class Agent:
    """A real rtdra-agent process with its NAS in a file."""

    def __init__(self, tmp: Path, *extra: str, release_on_exit: bool = True) -> None:
        self.release_on_exit = release_on_exit
        self.node = f"n-{uuid.uuid4().hex[:6]}"
        self.nas = tmp / "nas.json"
        self.state = tmp / "state"
        self.cdi = tmp / "cdi"
        self.hook_dir = tmp / "hooks"
        self.log = tmp / "agent.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def allocate(self, uid: str, container: str, slots: tuple[Slot, ...]) -> None:
        """Write an allocation through the file store's compare-and-swap, as the extender writes the NAS.

        Unchecked (no ``NodeLedger.reserve``): some tests allocate what the kernel must refuse.
        """
        allocation = PodAllocation(uid, "default", "p", {container: slots})
        self.change_ledger(lambda ledger: dataclasses.replace(ledger, pods={**ledger.pods, uid: allocation}))

    def change_ledger(self, change: Callable[[NodeLedger], NodeLedger]) -> None:
        def step(current: NodeLedger | None) -> NodeLedger:
            assert current is not None, "the agent has not published its NAS"
            return change(current)

        FileStore(self.node, self.nas).update(step)

    def start(self) -> None:
        argv = [sys.executable, "-m", "agent.cli", "--node-name", self.node, "--nas-file", str(self.nas)]
        argv += ["--state-dir", str(self.state), "--cdi-dir", str(self.cdi)]
        argv += ["--hook-dir", str(self.hook_dir), "--hook-python", HOST_PYTHON]
        argv += ["--release-on-exit"] if self.release_on_exit else []
        argv += ["--reconcile-interval", "0.2", "--no-device-plugin", *self.extra]  # not this host's kubelet's
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (self.state / "agent.sock").exists():
            assert self.proc.poll() is None, f"agent exited: {self.log.read_text()}"
            assert time.monotonic() < deadline, f"agent did not start: {self.log.read_text()}"
            time.sleep(0.05)

    def cdi_hooks(self) -> dict[str, dict[str, Any]]:
        """The hooks of our device in the CDI spec the agent wrote, by stage."""
        spec = json.loads((self.cdi / f"rt.resource.example.com-cpu-{self.node}.json").read_text())
        return {h["hookName"]: h for h in spec["devices"][0]["containerEdits"]["hooks"]}

    def hook(self, state: bytes, stage: str = "createRuntime") -> subprocess.CompletedProcess[bytes]:
        """Run the ``stage`` hook of the CDI spec as a runtime does: ``path``, ``args`` as argv, only its env."""
        entry = self.cdi_hooks()[stage]
        env = dict(item.split("=", 1) for item in entry.get("env") or [])
        return subprocess.run(
            entry["args"], executable=entry["path"], input=state, env=env, capture_output=True, timeout=30, check=False
        )

    def ledger(self) -> NodeLedger:
        return NodeLedger.from_nas(json.loads(self.nas.read_text()))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def containers(dl_clean: int | None) -> Iterator[Containers]:
    pool = Containers()
    try:
        yield pool
    finally:
        pool.close()


def start_agent(tmp_path: Path, *extra: str) -> Agent:
    agent = Agent(tmp_path, *extra)
    agent.start()
    return agent


@pytest.fixture
def agent(containers: Containers, tmp_path: Path) -> Iterator[Agent]:
    a = start_agent(tmp_path)
    try:
        yield a
    finally:
        a.stop()


def test_the_agent_holds_its_cpu_latency_bound_while_it_runs_and_drops_it_when_it_stops(
    containers: Containers, tmp_path: Path
) -> None:
    before = effective_latency_us()
    assert before > 0, "another process holds a bound of 0 already: nothing to see"
    agent = start_agent(tmp_path, "--cpu-latency-us", "0")
    try:
        assert effective_latency_us() == 0
        assert "holding a CPU wake-up latency bound of 0 us" in agent.log.read_text()
    finally:
        agent.stop()
    assert effective_latency_us() == before


def dl_params(tid: int) -> tuple[int, int, int, int]:
    attr = sched.sched_getattr(tid)
    return attr.policy, attr.runtime_ns, attr.deadline_ns, attr.period_ns


def test_hook_reserves_each_allocated_cpu_on_a_task_and_poststop_releases(agent: Agent, containers: Containers) -> None:
    slots = (Slot(0, 2_000_000, 5_000_000, 10_000_000), Slot(1, 2_000_000, 5_000_000, 10_000_000))
    agent.allocate("uid-a", "rt", slots)
    pid = containers.start(threads=2)
    done = agent.hook(oci_state(pid, "uid-a", "rt"))
    assert done.returncode == 0, done.stderr
    tids = sched.threads_of(pid)
    assert len(tids) == 2
    for tid in tids:
        assert sched.policy_from_proc(pid, tid) == sched.SCHED_DEADLINE
        assert dl_params(tid) == (sched.SCHED_DEADLINE, 2_000_000, 5_000_000, 10_000_000)
        assert sched.sched_getattr(tid).reset_on_fork
        assert sched.get_affinity(tid) == frozenset(host.online_cpus())  # global mode: the whole root domain
    prepared = agent.state / "prepared.json"
    record = json.loads(prepared.read_text())["uid-a"]["containers"]["rt"]
    assert sorted(t["cpu"] for t in record["tasks"]) == [0, 1]

    done = agent.hook(oci_state(pid, "uid-a", "rt"), stage="poststop")
    assert done.returncode == 0, done.stderr
    for tid in tids:
        assert sched.policy_from_proc(pid, tid) == sched.SCHED_OTHER
    assert json.loads(prepared.read_text()) == {}


def test_the_hook_installed_in_the_hook_dir_applies_a_real_reservation_under_the_hosts_python(
    agent: Agent, containers: Containers
) -> None:
    create, poststop = agent.cdi_hooks()["createRuntime"], agent.cdi_hooks()["poststop"]
    installed = agent.hook_dir / "rtdra_hook.py"
    assert installed.read_text() == (REPO / "agent" / "hook.py").read_text()
    for entry in (create, poststop):
        assert entry["path"] == HOST_PYTHON and entry["args"][0] == HOST_PYTHON
        assert repr(str(installed)) in entry["args"][4]  # the hook is loaded from the hook dir
        assert str(agent.state) not in entry["args"][4] and str(REPO) not in entry["args"][4]  # not from the image
    agent.allocate("uid-h", "rt", (Slot(1, 3_000_000, 8_000_000, 16_000_000),))
    pid = containers.start()
    done = agent.hook(oci_state(pid, "uid-h", "rt"))
    assert done.returncode == 0, done.stderr
    assert dl_params(pid) == (sched.SCHED_DEADLINE, 3_000_000, 8_000_000, 16_000_000)
    assert list((agent.hook_dir / "__pycache__").glob("rtdra_hook.*.pyc"))  # compiled once, by the host's Python
    done = agent.hook(oci_state(pid, "uid-h", "rt"), stage="poststop")
    assert done.returncode == 0, done.stderr
    assert sched.policy_from_proc(pid) == sched.SCHED_OTHER


def test_cri_o_annotations_are_understood(agent: Agent, containers: Containers) -> None:
    agent.allocate("uid-c", "rt", (Slot(1, 1_000_000, 10_000_000, 10_000_000),))
    pid = containers.start()
    done = agent.hook(oci_state(pid, "uid-c", "rt", crio=True))
    assert done.returncode == 0, done.stderr
    assert dl_params(pid) == (sched.SCHED_DEADLINE, 1_000_000, 10_000_000, 10_000_000)


def over_capacity_slots() -> tuple[Slot, ...]:
    """Two reservations that together exceed the free bandwidth of the root domain by a hair."""
    capacity = host.discover_capacity()
    over = capacity.free_bw // 2 + 1
    period = 1 << 30
    return (Slot(0, over << 10, period, period), Slot(1, over << 10, period, period))


def test_kernel_refusal_fails_the_hook_and_leaves_nothing_applied(agent: Agent, containers: Containers) -> None:
    agent.allocate("uid-b", "rt", over_capacity_slots())
    pid = containers.start(threads=2)
    done = agent.hook(oci_state(pid, "uid-b", "rt"))
    assert done.returncode == 1
    message = done.stderr.decode()
    assert "EBUSY" in message and message.count("\n") == 1, message
    for tid in sched.threads_of(pid):
        assert sched.policy_from_proc(pid, tid) == sched.SCHED_OTHER
    record = json.loads((agent.state / "prepared.json").read_text())["uid-b"]["containers"]["rt"]
    assert record["tasks"] == [] and "EBUSY" in record["error"]  # on record (and in the NAS), nothing applied


def test_fail_open_runs_the_container_unreserved_and_records_the_refusal(
    containers: Containers, tmp_path: Path
) -> None:
    agent = start_agent(tmp_path, "--fail-open")
    try:
        agent.allocate("uid-o", "rt", over_capacity_slots())
        pid = containers.start(threads=2)
        done = agent.hook(oci_state(pid, "uid-o", "rt"))
        assert done.returncode == 0, done.stderr
        for tid in sched.threads_of(pid):
            assert sched.policy_from_proc(pid, tid) == sched.SCHED_OTHER
        deadline = time.monotonic() + 10
        while "uid-o" not in agent.ledger().prepared and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "fail-open" in agent.ledger().prepared["uid-o"]["containers"]["rt"]["error"]
    finally:
        agent.stop()


def test_release_gives_back_the_affinity_that_global_mode_widened(agent: Agent, containers: Containers) -> None:
    agent.allocate("uid-f", "rt", (Slot(1, 1_000_000, 10_000_000, 10_000_000),))
    pid = containers.start()
    sched.set_affinity(pid, {1})
    assert agent.hook(oci_state(pid, "uid-f", "rt")).returncode == 0
    assert sched.get_affinity(pid) == frozenset(host.online_cpus())
    assert agent.hook(oci_state(pid, "uid-f", "rt"), stage="poststop").returncode == 0
    assert sched.policy_from_proc(pid) == sched.SCHED_OTHER
    assert sched.get_affinity(pid) == frozenset({1})


def test_container_without_allocation_is_refused_with_a_reason(agent: Agent, containers: Containers) -> None:
    pid = containers.start()
    done = agent.hook(oci_state(pid, "uid-none", "rt"))
    assert done.returncode == 1
    assert "no RT-DRA allocation" in done.stderr.decode()
    assert sched.policy_from_proc(pid) == sched.SCHED_OTHER


def test_deleted_pod_is_released_by_the_reconcile_loop(agent: Agent, containers: Containers) -> None:
    agent.allocate("uid-d", "rt", (Slot(0, 1_000_000, 10_000_000, 10_000_000),))
    pid = containers.start()
    assert agent.hook(oci_state(pid, "uid-d", "rt")).returncode == 0
    agent.change_ledger(lambda ledger: ledger.release("uid-d"))  # the pod was deleted: the extender releases it
    deadline = time.monotonic() + 10
    while sched.policy_from_proc(pid) == sched.SCHED_DEADLINE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sched.policy_from_proc(pid) == sched.SCHED_OTHER


def test_restarted_agent_adopts_its_reservations_without_applying_twice(containers: Containers, tmp_path: Path) -> None:
    first = Agent(tmp_path, release_on_exit=False)  # a crash or upgrade: reservations stay
    first.start()
    try:
        first.allocate("uid-r", "rt", (Slot(0, 1_000_000, 10_000_000, 10_000_000),))
        pid = containers.start()
        assert first.hook(oci_state(pid, "uid-r", "rt")).returncode == 0
    finally:
        first.stop()
    second = Agent(tmp_path)
    second.node = first.node
    second.start()
    try:
        assert sched.policy_from_proc(pid) == sched.SCHED_DEADLINE
        again = second.hook(oci_state(pid, "uid-r", "rt"))
        assert again.returncode == 0 and again.stderr == b""
        assert (
            json.loads((second.state / "prepared.json").read_text())["uid-r"]["containers"]["rt"]["tasks"][0]["tid"]
            == pid
        )
    finally:
        second.stop()  # --release-on-exit
    assert sched.policy_from_proc(pid) == sched.SCHED_OTHER


@pytest.fixture
def cpuset_root_guard() -> Iterator[dict[str, Any]]:
    """Restore the cpuset root and remove test partitions whatever happens."""
    flag = CPUSET / "cpuset.sched_load_balance"
    original = flag.read_text().strip()
    before = {p.name for p in CPUSET.iterdir() if p.is_dir()}
    info: dict[str, Any] = {"original": original, "before": before}
    try:
        yield info
    finally:
        for d in CPUSET.iterdir():
            if d.is_dir() and d.name not in before and d.name.startswith("rtdra-part-"):
                Partitions(CPUSET, d.name, host.online_cpus(), Path("/nonexistent")).teardown()
        flag.write_text(original)


def test_partitioned_mode_admits_per_cpu_and_restores_the_machine(
    containers: Containers, tmp_path: Path, cpuset_root_guard: dict[str, Any]
) -> None:
    name = f"rtdra-part-{uuid.uuid4().hex[:6]}"
    # Exclusive cpusets may not overlap their siblings: the "system" keeps CPU 0.
    (containers.cgroup / "cpuset.cpus").write_text("0")
    agent = start_agent(tmp_path, "--partitioned", "--rt-cpus", "1", "--partition-name", name)
    try:
        part = CPUSET / name / "cpu1"
        assert (part / "cpuset.cpu_exclusive").read_text().strip() == "1"
        assert (CPUSET / "cpuset.sched_load_balance").read_text().strip() == "0"
        capacity = agent.ledger().capacities
        assert set(capacity) == {1}
        cap = capacity[1]  # measured inside the one-CPU root domain: the limit less CPU 1's fair server
        assert 0 < cap < sched_cpu_limit()
        period = 1 << 30
        agent.allocate("uid-p", "rt", (Slot(1, cap << 10, period, period),))
        pid = containers.start()
        done = agent.hook(oci_state(pid, "uid-p", "rt"))
        assert done.returncode == 0, done.stderr
        assert sched.get_affinity(pid) == frozenset({1})
        assert Path(f"/proc/{pid}/cpuset").read_text().strip() == f"/{name}/cpu1"
        # The partition is full: one more unit on CPU 1 is refused by the kernel, per CPU.
        probe = containers.start()
        (part / "tasks").write_text(str(probe))
        tasks.settle_on(probe, (1,))
        with pytest.raises(sched.AdmissionRefused):
            sched.sched_setattr(probe, sched.deadline(1 << 10, period, period))
        (CPUSET / containers.cgroup.name / "tasks").write_text(str(probe))
        assert agent.hook(oci_state(pid, "uid-p", "rt"), stage="poststop").returncode == 0
        assert sched.policy_from_proc(pid) == sched.SCHED_OTHER
        assert Path(f"/proc/{pid}/cpuset").read_text().strip() == f"/{containers.cgroup.name}"
    finally:
        agent.stop()
    assert not (CPUSET / name).exists()
    assert (CPUSET / "cpuset.sched_load_balance").read_text().strip() == cpuset_root_guard["original"]


def test_an_agent_that_cannot_create_its_partitions_says_why_in_one_line_and_changes_nothing(
    containers: Containers, tmp_path: Path, cpuset_root_guard: dict[str, Any]
) -> None:
    # The test's cpuset keeps every CPU, as kubelet's kubepods does: an exclusive cpuset on CPU 1 overlaps it.
    name = f"rtdra-part-{uuid.uuid4().hex[:6]}"
    argv = [sys.executable, "-m", "agent.cli", "--node-name", "n-part", "--nas-file", str(tmp_path / "nas.json")]
    argv += ["--state-dir", str(tmp_path / "state"), "--no-cdi", "--partitioned", "--rt-cpus", "1"]
    done = subprocess.run(
        [*argv, "--partition-name", name], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(f"rtdra-agent: creating the cpuset partitions {CPUSET / name}: ")
    assert not (CPUSET / name).exists()
    assert (CPUSET / "cpuset.sched_load_balance").read_text().strip() == cpuset_root_guard["original"]


def sched_cpu_limit() -> int:
    return host.RtSysctls.read().cpu_limit
