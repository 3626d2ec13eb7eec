"""Property test of the agent's hook socket: whatever a client sends, it gets one line, ``ok ...`` or
``error ...``, the server lives on, and nothing is reserved for a pod the ledger does not allocate or for a
process that does not exist."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.backends.none import NoneBackend
from agent.enforce import Enforcer
from agent.events import LogEvents
from agent.server import HookServer
from agent.store import FileStore
from rtdra.ledger import NodeLedger, PodAllocation, Slot

SLOT = Slot(1, 2_000_000, 10_000_000, 10_000_000)
ALLOCATED = "uid-allocated"


@pytest.fixture(scope="module")
def hook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Enforcer, int]]:
    tmp = tmp_path_factory.mktemp("hook")
    store = FileStore("n1", tmp / "nas.json")
    store.update(
        lambda _: NodeLedger(
            "n1", {0: 1 << 19, 1: 1 << 19}, {ALLOCATED: PodAllocation(ALLOCATED, "ns", "p", {"app": (SLOT,)})}
        )
    )
    enforcer = Enforcer(store, NoneBackend(), LogEvents(), tmp / "prepared.json")
    enforcer.load()
    server = HookServer(tmp / "hook.sock", enforcer)
    server.start()
    child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        yield tmp / "hook.sock", enforcer, child.pid
    finally:
        child.kill()
        child.wait()
        server.stop()


def ask(path: Path, payload: bytes) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return s.recv(65536).decode(errors="replace")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
stages = st.sampled_from(["createRuntime", "startContainer", "poststop", "poststart-release", "", "bogus"])
uids = st.sampled_from([ALLOCATED, "uid-other", "", "x" * 300])
annotations = st.fixed_dictionaries(
    {
        "io.kubernetes.cri.container-type": st.sampled_from(["container", "sandbox", ""]),
        "io.kubernetes.cri.container-name": st.sampled_from(["app", "side", ""]),
        "io.kubernetes.cri.sandbox-uid": uids,
        "io.kubernetes.cri.sandbox-name": st.just("p"),
        "io.kubernetes.cri.sandbox-namespace": st.just("ns"),
    }
)


def states(live_pid: int) -> st.SearchStrategy[bytes]:
    shaped = st.builds(
        lambda stage, pid, notes, extra: (
            stage + "\n" + json.dumps({"ociVersion": "1.2.0", "id": "c1", "pid": pid, "annotations": notes, **extra})
        ).encode(),
        stages,
        st.sampled_from([live_pid, 0, -1, 2**31, 999_999_999]) | json_values,
        annotations | json_values,
        st.dictionaries(st.sampled_from(["status", "bundle", "pid"]), json_values, max_size=2),
    )
    return st.one_of(shaped, st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_every_message_gets_one_answer_and_nothing_is_reserved_on_garbage(
    hook: tuple[Path, Enforcer, int], data: st.DataObject
) -> None:
    path, enforcer, live_pid = hook
    answer = ask(path, data.draw(states(live_pid)))
    assert answer.endswith("\n") and answer.count("\n") == 1, answer
    assert answer.startswith(("ok ", "error ")), answer
    for uid, held in enforcer.applied.items():
        assert uid == ALLOCATED, f"reserved for {uid!r}, which the ledger does not allocate"
        for applied in held.values():
            assert applied.pid == live_pid or os.path.exists(f"/proc/{applied.pid}"), applied


@pytest.mark.parametrize("pid", [2**31, 999_999_999])
def test_a_process_that_does_not_exist_is_refused_and_nothing_is_recorded(
    hook: tuple[Path, Enforcer, int], pid: int
) -> None:
    # Found by the property above: the allocated pod's container with a pid no process has was "reserved".
    path, enforcer, _ = hook
    state = {
        "ociVersion": "1.2.0",
        "id": "c-ghost",
        "pid": pid,
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.sandbox-uid": ALLOCATED,
            "io.kubernetes.cri.sandbox-name": "p",
            "io.kubernetes.cri.sandbox-namespace": "ns",
        },
    }
    answer = ask(path, b"createRuntime\n" + json.dumps(state).encode())
    assert answer.startswith("error ") and f"process {pid} does not exist" in answer, answer
    assert all(a.pid != pid for held in enforcer.applied.values() for a in held.values())
