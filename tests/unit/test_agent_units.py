"""Agent pieces that need no kernel: OCI parsing, the CDI spec and the hook, the hcbs backend on fake
cgroup trees, the enforcer's decisions (backend ``none``, NAS in a file), configuration."""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT7

from agent import cdi, hook, hostview, oci
from agent.backends.base import Applied, Backend, EnforcementError, Target, TaskRecord
from agent.backends.hcbs import MULTI_RUNTIME, RT_MAX, RT_PERIOD, SUBTRACT, HcbsBackend
from agent.backends.none import NoneBackend
from agent.config import parse_args
from agent.discovery import simulate
from agent.enforce import Enforcer
from agent.store import FileStore
from rtdra import host, names, sched, tasks
from rtdra.ledger import NodeLedger, PodAllocation, Slot

REPO = Path(__file__).resolve().parents[2]
# shared/ lies beside the checkout (CI copies it there); /work/shared is the development layout.
SCHEMA_DIRS = [REPO.parent / "shared/data/cdi-schema", Path("/work/shared/data/cdi-schema")]


def cdi_validator() -> jsonschema.Draft7Validator:
    folder = next((d for d in SCHEMA_DIRS if (d / "schema.json").exists()), None)
    if folder is None:
        pytest.fail(f"CDI schema not found in {SCHEMA_DIRS}")
    schema = json.loads((folder / "schema.json").read_text())
    defs = json.loads((folder / "defs.json").read_text())
    registry = Registry().with_resource("defs.json", DRAFT7.create_resource(defs))
    return jsonschema.Draft7Validator(schema, registry=registry)


def node_spec(tmp_path: Path, python: str = "/usr/bin/python3") -> dict[str, Any]:
    argv = cdi.hook_command(tmp_path / "state" / "agent.sock", hook_dir=tmp_path / "hooks", python=python)
    return cdi.spec("node-1", argv)


def test_cdi_spec_validates_against_the_cdi_schema_and_names_our_device(tmp_path: Path) -> None:
    body = node_spec(tmp_path)
    cdi_validator().validate(body)
    assert body["kind"] == names.CDI_KIND and body["devices"][0]["name"] == names.CDI_DEVICE
    stages = [h["hookName"] for h in body["devices"][0]["containerEdits"]["hooks"]]
    assert stages == ["createRuntime", "poststop"]


def test_cdi_hooks_run_the_hosts_python_on_the_hook_in_the_hook_dir(tmp_path: Path) -> None:
    hooks = node_spec(tmp_path, python="/usr/bin/python3")["devices"][0]["containerEdits"]["hooks"]
    for h, stage in zip(hooks, ("createRuntime", "poststop"), strict=True):
        assert h["path"] == "/usr/bin/python3" and h["args"][0] == h["path"]  # OCI: args[0] is argv[0]
        assert h["args"][1:4] == ["-S", "-I", "-c"]  # no site-packages, no PYTHON* environment
        loader = h["args"][4]
        assert repr(str(tmp_path / "hooks" / "rtdra_hook.py")) in loader and "SourceFileLoader" in loader
        assert h["args"][5:] == ["--socket", str(tmp_path / "state" / "agent.sock"), "--stage", stage]
        assert "env" not in h  # runtimes give a hook only this env: nothing may depend on PATH or PYTHONPATH


def test_cdi_schema_rejects_a_spec_without_kind(tmp_path: Path) -> None:
    body = node_spec(tmp_path)
    del body["kind"]
    with pytest.raises(jsonschema.ValidationError):
        cdi_validator().validate(body)


def test_cdi_spec_is_written_atomically_and_only_when_changed(tmp_path: Path) -> None:
    body = cdi.spec("n", cdi.hook_command(tmp_path / "s", hook_dir=tmp_path / "h"))
    path = cdi.write_spec(tmp_path, "n", body)
    first = path.stat().st_mtime_ns
    assert cdi.write_spec(tmp_path, "n", body) == path and path.stat().st_mtime_ns == first
    assert json.loads(path.read_text()) == body
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


CONTAINERD = {
    "io.kubernetes.cri.sandbox-uid": "u1",
    "io.kubernetes.cri.sandbox-namespace": "ns",
    "io.kubernetes.cri.sandbox-name": "pod",
    "io.kubernetes.cri.container-name": "c",
    "io.kubernetes.cri.container-type": "container",
}


def test_containerd_annotations_identify_the_container() -> None:
    ref = oci.container_ref({"id": "x", "pid": 42, "annotations": CONTAINERD})
    assert (ref.pod_uid, ref.namespace, ref.pod_name, ref.container, ref.pid) == ("u1", "ns", "pod", "c", 42)


def test_sandbox_and_unannotated_states_are_refused_with_reasons() -> None:
    with pytest.raises(oci.BadState, match="sandbox"):
        oci.container_ref({"pid": 1, "annotations": {**CONTAINERD, "io.kubernetes.cri.container-type": "sandbox"}})
    with pytest.raises(oci.BadState, match=r"io\.kubernetes\.cri\.sandbox-uid"):
        oci.container_ref({"pid": 1, "annotations": {}})
    with pytest.raises(oci.BadState, match="not JSON"):
        oci.parse_state(b"{")


def fake_proc(tmp_path: Path, pid: int, cgroup_line: str) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cgroup").write_text(cgroup_line + "\n")
    return proc


def test_hcbs_v1_writes_the_seed_format_with_parent_bookkeeping_and_release_restores(tmp_path: Path) -> None:
    root = tmp_path / "cpu"
    leaf = root / "kubepods" / "burstable" / "podu1" / "ctr"
    leaf.mkdir(parents=True)
    for level in (root / "kubepods", root / "kubepods/burstable", root / "kubepods/burstable/podu1"):
        (level / MULTI_RUNTIME).write_text("100 0 0 ")  # kernel read format: one runtime per CPU
    (leaf / MULTI_RUNTIME).write_text("0 0 0 ")
    (leaf / RT_PERIOD).write_text("1000000")
    proc = fake_proc(tmp_path, 7, "4:cpu,cpuacct:/kubepods/burstable/podu1/ctr")
    backend = HcbsBackend(root, "v1", proc)
    ref = oci.ContainerRef("u1", "ns", "pod", "ctr", "id", 7)
    slots = (Slot(1, 2_000_000, 10_000_000, 10_000_000), Slot(2, 2_000_000, 10_000_000, 10_000_000))
    applied = backend.apply(Target(ref, slots))
    assert (leaf / MULTI_RUNTIME).read_text() == "1-2 2000 "
    assert (leaf / RT_PERIOD).read_text() == "10000"
    assert (root / "kubepods" / MULTI_RUNTIME).read_text() == "0 100 1 2000 2 2000 "
    assert applied.restore[str(root / "kubepods" / MULTI_RUNTIME)] == SUBTRACT
    backend.release(Applied.from_json("ctr", applied.to_json()))  # as after a restart
    assert (root / "kubepods" / MULTI_RUNTIME).read_text() == "0 100 1 0 2 0 "
    assert (leaf / MULTI_RUNTIME).read_text() == "0 0 0 "
    assert (leaf / RT_PERIOD).read_text() == "1000000"


def test_hcbs_v2_writes_cpu_rt_max_and_release_restores(tmp_path: Path) -> None:
    root = tmp_path / "unified"
    leaf = root / "kubepods.slice" / "cri-x.scope"
    leaf.mkdir(parents=True)
    (leaf / RT_MAX).write_text("0 1000000")
    proc = fake_proc(tmp_path, 9, "0::/kubepods.slice/cri-x.scope")
    backend = HcbsBackend(root, "v2", proc)
    applied = backend.apply(
        Target(oci.ContainerRef("u", "n", "p", "c", "i", 9), (Slot(0, 500_000, 1_000_000, 1_000_000),))
    )
    assert (leaf / RT_MAX).read_text() == "500 1000"
    backend.release(applied)
    assert (leaf / RT_MAX).read_text() == "0 1000000"


# -- the enforcer, with the NAS in a file and the accounting-only backend ------------------------------------


class RecordingEvents:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def emit(self, ref: oci.ContainerRef, reason: str, message: str, type_: str = "Warning") -> None:
        self.seen.append((ref.pod_uid, reason, message))


class RefusingBackend(NoneBackend):
    """Refuses like the kernel does when the root domain is full."""

    def apply(self, target: Target) -> Applied:
        raise EnforcementError(f"{target.ref}: the kernel refused SCHED_DEADLINE: Device or resource busy", errno.EBUSY)


SLOT = Slot(0, 1_000_000, 10_000_000, 10_000_000)


def nas_with(tmp_path: Path, *uids: str) -> FileStore:
    store = FileStore("n1", tmp_path / "nas.json")
    pods = {uid: PodAllocation(uid, "ns", "pod", {"c": (SLOT,)}) for uid in uids}
    store.update(lambda _: NodeLedger("n1", {0: 1 << 19, 1: 1 << 19}, pods))
    return store


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process to stand for a container (no kernel state is changed for it)."""
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def state_of(pid: int, uid: str, container: str = "c") -> bytes:
    annotations = {**CONTAINERD, "io.kubernetes.cri.sandbox-uid": uid, "io.kubernetes.cri.container-name": container}
    return json.dumps({"id": f"ctr-{uid}", "pid": pid, "annotations": annotations}).encode()


def make_enforcer(tmp_path: Path, store: FileStore, backend: Backend, *, fail_open: bool = False) -> Enforcer:
    enforcer = Enforcer(store, backend, RecordingEvents(), tmp_path / "prepared.json", fail_open=fail_open)
    enforcer.load()
    return enforcer


def events_of(enforcer: Enforcer) -> list[tuple[str, str, str]]:
    assert isinstance(enforcer.events, RecordingEvents)
    return enforcer.events.seen


def test_enforcer_records_the_reservation_in_its_state_file_before_answering(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    enforcer = make_enforcer(tmp_path, nas_with(tmp_path, "u1"), NoneBackend())
    outcome = enforcer.handle("createRuntime", state_of(child.pid, "u1"))
    assert outcome.ok, outcome.message
    record = json.loads((tmp_path / "prepared.json").read_text())["u1"]["containers"]["c"]
    assert record["pid"] == child.pid and record["startTime"] == tasks.task_start_time(child.pid)
    assert enforcer.handle("createRuntime", state_of(child.pid, "u1")).message.endswith("already reserved")


def test_enforcer_refuses_a_container_without_allocation_and_sends_an_event(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    enforcer = make_enforcer(tmp_path, nas_with(tmp_path), NoneBackend())
    outcome = enforcer.handle("createRuntime", state_of(child.pid, "u-none"))
    assert not outcome.ok and "no RT-DRA allocation" in outcome.message
    assert [(uid, reason) for uid, reason, _ in events_of(enforcer)] == [("u-none", "NoAllocation")]


def test_a_kernel_refusal_fails_closed_and_is_recorded_and_reported(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    enforcer = make_enforcer(tmp_path, nas_with(tmp_path, "u1"), RefusingBackend())
    outcome = enforcer.handle("createRuntime", state_of(child.pid, "u1"))
    assert not outcome.ok and "Device or resource busy" in outcome.message
    assert [reason for _, reason, _ in events_of(enforcer)] == ["KernelRefusedBandwidth"]
    record = enforcer.prepared_json()["u1"]["containers"]["c"]
    assert record["tasks"] == [] and "Device or resource busy" in record["error"]
    enforcer.reconcile()  # kept on record while the pod is allocated
    assert "u1" in enforcer.prepared_json()


def test_fail_open_lets_the_container_run_unreserved_and_says_so(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    enforcer = make_enforcer(tmp_path, nas_with(tmp_path, "u1"), RefusingBackend(), fail_open=True)
    outcome = enforcer.handle("createRuntime", state_of(child.pid, "u1"))
    assert outcome.ok and "fail-open" in outcome.message
    assert "fail-open" in events_of(enforcer)[0][2]
    assert "fail-open" in enforcer.prepared_json()["u1"]["containers"]["c"]["error"]


def test_reconcile_releases_pods_whose_allocation_disappeared(tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    store = nas_with(tmp_path, "u1", "u2")
    enforcer = make_enforcer(tmp_path, store, NoneBackend())
    for uid in ("u1", "u2"):
        assert enforcer.handle("createRuntime", state_of(child.pid, uid)).ok
    store.update(lambda ledger: (ledger or NodeLedger("n1", {})).release("u1"))
    enforcer.reconcile()
    assert set(enforcer.prepared_json()) == {"u2"}
    assert set(json.loads((tmp_path / "prepared.json").read_text())) == {"u2"}


def test_publishing_never_undoes_a_deletion_written_meanwhile_without_the_lock(tmp_path: Path) -> None:
    """The cause of a flaky kernel test: the agent's read-modify-write put a deleted allocation back."""
    store = nas_with(tmp_path, "uid-gone", "uid-kept")
    deleted = False

    def publish(current: NodeLedger | None) -> NodeLedger:
        nonlocal deleted
        assert current is not None
        if not deleted:  # the extender (or a test) replaces the file between the agent's read and write
            deleted = True
            tmp = tmp_path / "nas.new"
            tmp.write_text(json.dumps(current.release("uid-gone").to_nas()))
            os.replace(tmp, store.path)
        return replace(current, ready=True)

    stored = store.update(publish)
    assert set(stored.pods) == {"uid-kept"} and stored.ready
    ledger = store.read()
    assert ledger is not None and set(ledger.pods) == {"uid-kept"}


def test_reconcile_releases_containers_whose_process_is_gone(tmp_path: Path) -> None:
    enforcer = make_enforcer(tmp_path, nas_with(tmp_path, "u1"), NoneBackend())
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        assert enforcer.handle("createRuntime", state_of(proc.pid, "u1")).ok
    finally:
        proc.kill()
        proc.wait()
    enforcer.reconcile()
    assert enforcer.prepared_json() == {}


def test_a_reused_process_id_is_not_taken_for_the_reserved_process(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    now = tasks.task_start_time(child.pid)
    assert Applied("none", "c", "id", child.pid, (SLOT,), start_time=now).is_alive()
    assert not Applied("none", "c", "id", child.pid, (SLOT,), start_time=now - 1).is_alive()
    assert not TaskRecord(child.pid, 0, start_time=now + 1).is_alive()
    assert TaskRecord(child.pid, 0).is_alive()  # records from before start times were kept: by id
    # After a restart, a record of an earlier process with this id is not "already reserved".
    enforcer = make_enforcer(tmp_path, nas_with(tmp_path, "u1"), NoneBackend())
    stale = Applied("none", "c", "ctr-u1", child.pid, (SLOT,), start_time=now - 1)
    enforcer.applied = {"u1": {"c": stale}}
    outcome = enforcer.handle("createRuntime", state_of(child.pid, "u1"))
    assert outcome.ok and "already" not in outcome.message
    assert enforcer.applied["u1"]["c"].start_time == now


def test_a_restarted_enforcer_merges_its_state_file_with_the_nas_records(tmp_path: Path) -> None:
    store = nas_with(tmp_path, "u1", "u2")
    in_nas = Applied("none", "c", "old", 11, (SLOT,))
    store.update(
        lambda ledger: replace(ledger or NodeLedger("n1", {}), prepared={"u1": {"containers": {"c": in_nas.to_json()}}})
    )
    local = Applied("none", "c", "new", 12, (SLOT,), tasks=(TaskRecord(12, 0, start_time=5, affinity=(1,)),))
    (tmp_path / "prepared.json").write_text(json.dumps({"u1": {"containers": {"c": local.to_json()}}}))
    enforcer = make_enforcer(tmp_path, store, NoneBackend())
    assert enforcer.applied == {"u1": {"c": local}}  # the local file is written first: it wins


def test_applied_records_round_trip_through_json() -> None:
    record = Applied(
        "deadline", "c", "id", 7, (SLOT,), (TaskRecord(7, 0, "/kubepods", 99, (0, 1)),), {"/x": "1"}, "e", 42
    )
    assert Applied.from_json("c", json.loads(json.dumps(record.to_json()))) == record


def test_file_store_updates_are_compare_and_swap_under_concurrency(tmp_path: Path) -> None:
    store = nas_with(tmp_path)

    def add(i: int) -> None:
        store.update(
            lambda ledger: replace(
                ledger or NodeLedger("n1", {}), prepared={**(ledger.prepared if ledger else {}), f"u{i}": {}}
            )
        )

    threads = [threading.Thread(target=add, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger = store.read()
    assert ledger is not None and set(ledger.prepared) == {f"u{i}" for i in range(16)}


# -- configuration and simulated nodes ------------------------------------------------------------------------


def test_simulated_node_flags_publish_the_given_cpus_and_capacity() -> None:
    config = parse_args(["--node-name", "sim", "--backend", "none", "--cpus", "16", "--capacity", "900000"], env={})
    facts = simulate(config.sim_cpus, config.capacity, config.rt_cpus)
    assert facts.capacities == dict.fromkeys(range(16), 900_000)
    assert facts.root_domain_capacity == 16 * 900_000 and facts.cpus == tuple(range(16))


def test_simulated_node_flags_come_from_the_environment_too() -> None:
    env = {"RTDRA_AGENT_NODE_NAME": "sim", "RTDRA_AGENT_BACKEND": "none", "RTDRA_AGENT_CPUS": "4"}
    config = parse_args([], env=env)
    assert (config.node_name, config.sim_cpus, config.capacity) == ("sim", 4, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["--backend", "deadline", "--cpus", "4"],
        ["--backend", "none", "--capacity", str((1 << 20) + 1)],
        ["--backend", "none", "--cpus", "0"],
    ],
)
def test_simulation_flags_are_refused_where_they_make_no_sense(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--node-name", "x", *argv], env={})


def test_the_cpu_latency_request_is_off_by_default_and_read_from_the_flag_or_the_environment() -> None:
    assert parse_args(["--node-name", "n"], env={}).cpu_latency_us is None
    assert parse_args(["--node-name", "n", "--cpu-latency-us", "0"], env={}).cpu_latency_us == 0
    assert parse_args(["--node-name", "n"], env={"RTDRA_AGENT_CPU_LATENCY_US": "50"}).cpu_latency_us == 50


@pytest.mark.parametrize(
    "argv",
    [
        ["--cpu-latency-us", "-1"],
        ["--cpu-latency-us", "soon"],
        ["--backend", "none", "--cpu-latency-us", "0"],  # a simulated node must not change how this host idles
    ],
)
def test_a_cpu_latency_request_that_makes_no_sense_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--node-name", "x", *argv], env={})
    assert exit_.value.code == 2


# -- the hook's own decisions ---------------------------------------------------------------------------------


def test_the_hook_fails_closed_with_one_line_when_the_agent_is_unreachable(tmp_path: Path) -> None:
    code, line = hook.run(["--socket", str(tmp_path / "none.sock")], b"{}")
    assert code == 1 and "unreachable" in line and "\n" not in line


def test_the_hook_continues_when_told_to_fail_open_or_releasing(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    assert hook.run(["--socket", sock, "--fail-open"], b"{}")[0] == 0
    assert hook.run(["--socket", sock, "--stage", "poststop"], b"{}")[0] == 0
    assert hook.run(["--bogus"], b"{}")[0] == 2


# -- the hook as the host runs it ------------------------------------------------------------------------------


class FakeAgent:
    """A unix socket answering every hook call with one fixed line, recording what it was sent."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.answer = answer
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                self.received.append(data)
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


def run_as_runtime(hook_entry: dict[str, Any], state: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run a CDI hook the way runc does: ``path`` executed with ``args`` as argv, only the hook's ``env``."""
    env = dict(item.split("=", 1) for item in hook_entry.get("env") or [])
    return subprocess.run(
        hook_entry["args"],
        executable=hook_entry["path"],
        input=state,
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )


def other_cpythons() -> list[str]:
    """Installed CPython 3 interpreters other than this one (as a node's host may have), oldest first."""
    found: dict[str, str] = {}
    candidates = [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.*/bin/python3"))]
    candidates += ["/usr/bin/python3", *(shutil.which(f"python3.{minor}") for minor in range(6, 15))]
    for exe in filter(None, candidates):
        try:
            done = subprocess.run(
                [exe, "-S", "-I", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        version = done.stdout.decode().strip()
        if done.returncode == 0 and version and version not in found:
            found[version] = exe
    return [found[v] for v in sorted(found, key=lambda v: tuple(map(int, v.split("."))))]


def test_the_installed_hook_forwards_the_state_and_reports_the_agents_answer(tmp_path: Path) -> None:
    installed = cdi.install_hook(tmp_path / "hooks")
    assert installed == tmp_path / "hooks" / "rtdra_hook.py" and installed.read_text() == cdi.HOOK_SOURCE.read_text()
    body = cdi.spec("n", cdi.hook_command(tmp_path / "ok.sock", hook_dir=tmp_path / "hooks"))
    create, poststop = body["devices"][0]["containerEdits"]["hooks"]
    agent = FakeAgent(tmp_path / "ok.sock", b"ok reserved\n")
    try:
        done = run_as_runtime(create, b'{"pid": 42}')
        assert (done.returncode, done.stderr) == (0, b"")
        assert agent.received == [b'createRuntime\n{"pid": 42}']
    finally:
        agent.close()
    refusing = FakeAgent(tmp_path / "ok.sock.2", b"error EBUSY: the kernel refused\n")
    try:
        argv = [*create["args"][:6], str(tmp_path / "ok.sock.2"), "--stage", "createRuntime"]
        done = run_as_runtime({**create, "args": argv}, b"{}")
        assert done.returncode == 1 and done.stderr == b"rtdra-hook: EBUSY: the kernel refused\n"
        argv = [*poststop["args"][:6], str(tmp_path / "ok.sock.2"), "--stage", "poststop"]
        assert run_as_runtime({**poststop, "args": argv}, b"{}").returncode == 0  # a release never blocks a stop
    finally:
        refusing.close()


def test_the_installed_hook_imports_no_site_packages_and_caches_its_bytecode(tmp_path: Path) -> None:
    cdi.install_hook(tmp_path / "hooks")
    argv = cdi.hook_command(tmp_path / "none.sock", hook_dir=tmp_path / "hooks")
    timed = [argv[0], "-X", "importtime", *argv[1:]]
    done = subprocess.run(timed, input=b"{}", env={}, capture_output=True, check=False, timeout=30)
    assert done.returncode == 1 and b"unreachable" in done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines() if "|" in line}
    assert "_socket" in imported, imported  # the hook did run
    assert {"os", "json", "socket", "site", "importlib", "importlib.machinery"}.isdisjoint(imported), imported
    cached = list((tmp_path / "hooks" / "__pycache__").glob("rtdra_hook.*.pyc"))
    assert len(cached) == 1 and sys.implementation.cache_tag in cached[0].name  # compiled once, by the host's Python


def test_the_hook_loader_falls_back_to_the_public_loader_where_the_frozen_one_is_missing(tmp_path: Path) -> None:
    cdi.install_hook(tmp_path / "hooks")
    argv = cdi.hook_command(tmp_path / "a.sock", hook_dir=tmp_path / "hooks")
    argv[4] = "import sys\nsys.modules['_frozen_importlib_external'] = None\n" + argv[4]  # import fails
    agent = FakeAgent(tmp_path / "a.sock", b"ok done\n")
    try:
        done = subprocess.run(argv, input=b"{}", env={}, capture_output=True, check=False, timeout=30)
    finally:
        agent.close()
    assert (done.returncode, done.stderr) == (0, b""), done.stderr.decode()
    assert agent.received == [b"createRuntime\n{}"]


def test_reinstalling_a_changed_hook_drops_the_bytecode_cached_for_the_old_one(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    installed = cdi.install_hook(hooks)
    cache = hooks / "__pycache__" / f"rtdra_hook.{sys.implementation.cache_tag}.pyc"
    cache.parent.mkdir()
    cache.write_bytes(b"stale")
    mtime = installed.stat().st_mtime_ns
    assert cdi.install_hook(hooks) == installed and installed.stat().st_mtime_ns == mtime and cache.exists()
    newer = tmp_path / "hook.py"
    newer.write_text(cdi.HOOK_SOURCE.read_text() + "\n# a new version\n")
    cdi.install_hook(hooks, source=newer)
    assert installed.read_text() == newer.read_text() and not cache.exists()
    assert sorted(p.name for p in hooks.iterdir()) == ["__pycache__", "rtdra_hook.py"]  # no temp file left


def test_a_hook_dir_is_closed_to_others_and_one_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hooks.chmod(0o777)
    cdi.install_hook(hooks)
    assert stat.S_IMODE(hooks.stat().st_mode) == 0o755  # nobody else may replace what the host runs as root
    if os.geteuid() != 0:
        return  # giving the directory to another user needs root
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    with pytest.raises(cdi.HookDirError, match="owned by uid 65534"):
        cdi.install_hook(foreign)
    assert not (foreign / "rtdra_hook.py").exists()


@pytest.mark.parametrize("python", other_cpythons() or [sys.executable])
def test_the_hook_runs_under_every_cpython_a_host_may_have(python: str, tmp_path: Path) -> None:
    cdi.install_hook(tmp_path / "hooks")
    argv = cdi.hook_command(tmp_path / "a.sock", hook_dir=tmp_path / "hooks", python=python)
    agent = FakeAgent(tmp_path / "a.sock", b"ok done\n")
    try:
        done = subprocess.run(argv, input=b"{}", env={}, capture_output=True, check=False, timeout=30)
    finally:
        agent.close()
    assert (done.returncode, done.stderr) == (0, b""), done.stderr.decode()


def test_the_hook_source_stays_within_python_3_6() -> None:
    source = cdi.HOOK_SOURCE.read_text()
    tree = ast.parse(source, feature_version=(3, 6))  # no walrus, positional-only parameters, match, ...
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imports == {"_socket", "sys"}
    assert not any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))  # no __future__ (3.7+), no packages
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        evaluated = [a.annotation for a in fn.args.args] + [fn.returns]
        for annotation in filter(None, evaluated):  # evaluated at definition time: `list[str]` fails before 3.9
            assert isinstance(annotation, ast.Name | ast.Constant), ast.unparse(annotation)


# -- the host's interpreter, seen from the agent's container ---------------------------------------------------


def fake_host(tmp_path: Path) -> Path:
    root = tmp_path / "host"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc" / "alternatives").mkdir(parents=True)
    (root / "usr" / "bin" / "python3.9").write_text("")
    (root / "usr" / "bin" / "python3.9").chmod(0o755)
    (root / "etc" / "alternatives" / "python3").symlink_to("/usr/bin/python3.9")  # absolute: the host's /usr
    (root / "usr" / "bin" / "python3").symlink_to("/etc/alternatives/python3")
    (root / "usr" / "bin" / "notes").write_text("")
    return root


def test_the_hook_python_is_looked_up_on_the_host_with_its_own_symlinks(tmp_path: Path) -> None:
    root = fake_host(tmp_path)
    assert hostview.resolve_on_host("/usr/bin/python3", root) == root / "usr" / "bin" / "python3.9"
    assert hostview.check_host_executable("/usr/bin/python3", "--hook-python", root) is None
    with pytest.raises(hostview.HostPathError, match="does not exist on the host"):
        hostview.check_host_executable("/usr/local/bin/python3", "--hook-python", root)
    with pytest.raises(hostview.HostPathError, match="not an executable file"):
        hostview.check_host_executable("/usr/bin/notes", "--hook-python", root)
    (root / "usr" / "bin" / "python3.9").unlink()  # a dangling link is a missing interpreter
    with pytest.raises(hostview.HostPathError, match="does not exist"):
        hostview.check_host_executable("/usr/bin/python3", "--hook-python", root)


def test_hook_flags_default_to_the_state_dir_and_this_interpreter_and_come_from_the_environment() -> None:
    config = parse_args(["--node-name", "n", "--state-dir", "/s"], env={})
    assert (config.hook_dir, config.hook_python) == (Path("/s"), sys.executable)
    env = {"RTDRA_AGENT_HOOK_DIR": "/opt/rt-dra/bin", "RTDRA_AGENT_HOOK_PYTHON": "/usr/bin/python3"}
    config = parse_args(["--node-name", "n"], env=env)
    assert (config.hook_dir, config.hook_python) == (Path("/opt/rt-dra/bin"), "/usr/bin/python3")
    with pytest.raises(SystemExit):
        parse_args(["--node-name", "n", "--hook-python", "python3"], env={})  # OCI: no PATH lookup


def test_the_nas_is_not_ready_until_the_node_can_give_rt_containers_their_device(tmp_path: Path) -> None:
    """With a device plugin, kubelet must have registered it before the extender may place RT pods here."""
    from agent.reconcile import Loop

    store = nas_with(tmp_path)
    registered = threading.Event()
    loop = Loop(store, simulate(2, 1 << 19, None), make_enforcer(tmp_path, store, NoneBackend()), 1.0,
                ready=registered.is_set)  # fmt: skip
    loop.step()
    assert store.read().ready is False
    registered.set()
    loop.step()
    assert store.read().ready is True
    registered.clear()  # kubelet restarted: until the plugin registers again
    loop.step()
    assert store.read().ready is False


def test_the_backend_choices_and_discovery_come_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.backends.registry import BACKENDS, NAMES
    from agent.discovery import supported_backends

    assert tuple(BACKENDS) == NAMES and NAMES[0] == "deadline"
    for name in NAMES:
        assert parse_args(["--node-name", "n", "--backend", name], env={}).backend == name
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--node-name", "n", "--backend", "bogus"], env={})
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith("(choose from 'deadline', 'hcbs', 'none')\n")
    assert "none" in supported_backends(host.cgroup_layout())


def test_capacity_is_never_more_than_the_rt_limit_when_the_measurement_overstates_what_is_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the chaos suite: a restarted agent beside a reserved container measured 110% per CPU."""
    limit = 943719  # the RT limit (996147) less the fair server (52428)
    alive = host.DeadlineTask(4242, sched.deadline(4_000_000, 10_000_000, 10_000_000), frozenset({0, 1}))
    monkeypatch.setattr(host, "read_debugfs", lambda *_a, **_k: None)
    monkeypatch.setattr(host, "deadline_tasks", lambda: [alive])
    monkeypatch.setattr(host, "_probe", lambda *_a, **_k: 2 * limit)  # the task not counted
    sysctls = host.RtSysctls(rt_runtime_us=950000, rt_period_us=1000000, period_min_us=100, period_max_us=4194304)
    measured = host.discover_capacity((0, 1), sysctls=sysctls)
    assert measured.per_cpu == {0: limit, 1: limit}
    assert measured.root_domain_capacity == 2 * limit
    assert any("taken as not counting them" in note for note in measured.notes)


def test_a_task_caught_entering_sched_deadline_is_read_again_not_counted_with_a_zero_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel sets a task's policy before its deadline parameters and sched_getattr takes no lock: a
    discovery running beside another agent's probe read policy 6 with period 0 and died dividing by it."""
    for tid in (10, 11, 12):
        (tmp_path / str(tid) / "task" / str(tid)).mkdir(parents=True)
    reads: dict[int, int] = {}
    half_set = sched.SchedAttr(policy=sched.SCHED_DEADLINE)  # policy written, parameters not yet
    done = sched.SchedAttr(
        policy=sched.SCHED_DEADLINE, runtime_ns=1_000_000, deadline_ns=10_000_000, period_ns=10_000_000
    )

    def getattr_(tid: int) -> sched.SchedAttr:
        reads[tid] = reads.get(tid, 0) + 1
        if tid == 10:  # set by the second read
            return half_set if reads[tid] == 1 else done
        if tid == 11:  # still half set: skipped
            return half_set
        return sched.SchedAttr()  # a SCHED_OTHER task

    monkeypatch.setattr(host.sched, "sched_getattr", getattr_)
    monkeypatch.setattr(host.sched, "get_affinity", lambda tid: frozenset({0}))
    found = host.deadline_tasks(tmp_path)
    assert [(t.tid, t.bandwidth) for t in found] == [(10, host.bandwidth(1_000_000, 10_000_000))]
    assert reads == {10: 2, 11: 2, 12: 1}
