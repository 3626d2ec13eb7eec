"""The agent's NRI plugin against a fake runtime, over real unix sockets.

The fake runtime (``hack/fake_nri.py``) plays NRI's adaptation with the same generated
messages: registration, Configure, Synchronize, then events. The agent side is the real
stub, plugin and Enforcer, with the NAS in a file and the accounting-only backend (no kernel
state is touched; ``tests/kernel`` and ``tests/e2e/test_nri.py`` do that).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # hack/ is the harness, as in tests/e2e
    sys.path.insert(0, str(REPO))

from agent._generated.nri import api_pb2, ttrpc_pb2  # noqa: E402
from agent.backends import Applied  # noqa: E402
from agent.backends.none import NoneBackend  # noqa: E402
from agent.cli import start_nri  # noqa: E402
from agent.config import parse_args  # noqa: E402
from agent.enforce import Enforcer  # noqa: E402
from agent.events import LogEvents  # noqa: E402
from agent.nri import wire  # noqa: E402
from agent.nri.plugin import RtPlugin, granted, requested  # noqa: E402
from agent.nri.stub import Stub, event_mask  # noqa: E402
from agent.store import FileStore  # noqa: E402
from hack.fake_nri import CallFailed, FakeRuntime, PluginTimedOut  # noqa: E402
from rtdra import names  # noqa: E402
from rtdra.ledger import NodeLedger, PodAllocation, Slot, allocation_annotation  # noqa: E402

SLOT = Slot(1, 2_000_000, 10_000_000, 10_000_000)
#: What the extender's bind writes (the real writer: a hand-written copy once hid that the reader used other keys).
ALLOCATION = allocation_annotation(PodAllocation("uid-1", "ns", "p", {"rt": (SLOT,)}), "n1")


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A live process to stand for a container's first process."""
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def make_enforcer(tmp_path: Path, *uids: str) -> Enforcer:
    store = FileStore("n1", tmp_path / "nas.json")
    pods = {uid: PodAllocation(uid, "ns", "pod", {"rt": (SLOT,)}) for uid in uids}
    store.update(lambda _: NodeLedger("n1", {0: 1 << 19, 1: 1 << 19}, pods))
    enforcer = Enforcer(store, NoneBackend(), LogEvents(), tmp_path / "prepared.json")
    enforcer.load()
    return enforcer


def pod(uid: str = "u1", annotations: dict[str, str] | None = None) -> api_pb2.PodSandbox:
    found = {names.ALLOCATION: ALLOCATION} if annotations is None else annotations
    return api_pb2.PodSandbox(id=f"sb-{uid}", uid=uid, name="pod", namespace="ns", annotations=found)


def container(
    pid: int = 0, name: str = "rt", cid: str = "c1", uid: str = "u1", env: tuple[str, ...] = ()
) -> api_pb2.Container:
    return api_pb2.Container(
        id=cid,
        pod_sandbox_id=f"sb-{uid}",
        name=name,
        pid=pid,
        env=env,
        state=api_pb2.CONTAINER_RUNNING if pid else api_pb2.CONTAINER_CREATED,
    )


class Session:
    """A stub serving one connection of a socketpair in a thread; the other end is the fake runtime."""

    def __init__(self, stub: Stub, *, request_timeout_s: float = 2.0) -> None:
        self.stub = stub
        ours, theirs = socket.socketpair()
        self.runtime = FakeRuntime(theirs, request_timeout_s=request_timeout_s)
        self.result: list[bool] = []
        self.thread = threading.Thread(target=lambda: self.result.append(stub.session(ours)), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.runtime.close()
        self.thread.join(5)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    s = Session(Stub(tmp_path / "nri.sock", RtPlugin(make_enforcer(tmp_path, "u1"))))
    try:
        yield s
    finally:
        s.close()


def enforcer_of(s: Session) -> Enforcer:
    plugin = s.stub.handlers
    assert isinstance(plugin, RtPlugin)
    return plugin.enforcer


# -- the handshake ------------------------------------------------------------------------------


def test_handshake_registers_then_answers_configure_with_the_events_it_handles(session: Session) -> None:
    session.runtime.handshake()
    assert session.runtime.registration == api_pb2.RegisterPluginRequest(
        plugin_name="rtdra", plugin_idx="10", NRI_version="v0.12.3"
    )
    wanted = [
        api_pb2.CREATE_CONTAINER,
        api_pb2.START_CONTAINER,
        api_pb2.POST_START_CONTAINER,
        api_pb2.STOP_CONTAINER,
        api_pb2.REMOVE_CONTAINER,
        api_pb2.REMOVE_POD_SANDBOX,
    ]
    assert session.runtime.events == event_mask(wanted)
    assert not session.runtime.subscribed(api_pb2.RUN_POD_SANDBOX)
    assert wait_until(session.stub.synchronized.is_set)
    assert session.stub.request_timeout_s == 2.0


def test_a_split_synchronize_is_collected_and_answered_at_the_end(
    session: Session, child: subprocess.Popen[bytes]
) -> None:
    runtime = session.runtime
    assert runtime.registered.wait(5)
    runtime.call("Configure", api_pb2.ConfigureRequest(runtime_name="fake"), api_pb2.ConfigureResponse())
    first = runtime.call(
        "Synchronize", api_pb2.SynchronizeRequest(pods=[pod()], more=True), api_pb2.SynchronizeResponse()
    )
    assert first.more and not first.update
    assert not enforcer_of(session).applied
    runtime.call(
        "Synchronize", api_pb2.SynchronizeRequest(containers=[container(child.pid)]), api_pb2.SynchronizeResponse()
    )
    assert enforcer_of(session).applied["u1"]["rt"].pid == child.pid


# -- what the plugin does -------------------------------------------------------------------------


def test_create_container_adds_only_the_missing_rt_environment(session: Session) -> None:
    session.runtime.handshake()
    request = api_pb2.CreateContainerRequest(pod=pod(), container=container(env=("RT_RUNTIME_NS=2000000", "PATH=/bin")))
    reply = session.runtime.call("CreateContainer", request, api_pb2.CreateContainerResponse())
    assert {kv.key: kv.value for kv in reply.adjust.env} == {
        "RT_DEADLINE_NS": "10000000",
        "RT_PERIOD_NS": "10000000",
        "RT_CPUS": "1",
    }
    assert not reply.adjust.HasField("linux")


def test_a_container_without_rt_annotations_is_left_alone(session: Session, child: subprocess.Popen[bytes]) -> None:
    session.runtime.handshake()
    plain = pod(annotations={})
    reply = session.runtime.call(
        "CreateContainer",
        api_pb2.CreateContainerRequest(pod=plain, container=container()),
        api_pb2.CreateContainerResponse(),
    )
    assert reply == api_pb2.CreateContainerResponse()
    session.runtime.call(
        "StartContainer", api_pb2.StartContainerRequest(pod=plain, container=container(child.pid)), api_pb2.Empty()
    )
    assert not enforcer_of(session).applied


def test_start_container_reserves_in_process_and_stop_releases(
    session: Session, child: subprocess.Popen[bytes]
) -> None:
    runtime = session.runtime
    runtime.handshake()
    runtime.call(
        "StartContainer", api_pb2.StartContainerRequest(pod=pod(), container=container(child.pid)), api_pb2.Empty()
    )
    held = enforcer_of(session).applied["u1"]["rt"]
    assert (held.container_id, held.pid, held.slots) == ("c1", child.pid, (SLOT,))
    # PostStartContainer finds it done (same container, same process): the record is unchanged.
    runtime.call(
        "PostStartContainer",
        api_pb2.PostStartContainerRequest(pod=pod(), container=container(child.pid)),
        api_pb2.Empty(),
    )
    assert enforcer_of(session).applied["u1"]["rt"] is held
    runtime.call(
        "StopContainer",
        api_pb2.StopContainerRequest(pod=pod(), container=container(child.pid)),
        api_pb2.StopContainerResponse(),
    )
    assert "u1" not in enforcer_of(session).applied


def test_remove_pod_sandbox_releases_the_whole_pod(session: Session, child: subprocess.Popen[bytes]) -> None:
    session.runtime.handshake()
    session.runtime.call(
        "StartContainer", api_pb2.StartContainerRequest(pod=pod(), container=container(child.pid)), api_pb2.Empty()
    )
    session.runtime.call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod=pod()), api_pb2.Empty())
    assert not enforcer_of(session).applied


def test_an_rt_container_without_an_allocation_fails_its_start(tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    s = Session(Stub(tmp_path / "nri.sock", RtPlugin(make_enforcer(tmp_path))))  # the NAS holds nothing
    try:
        s.runtime.handshake()
        with pytest.raises(CallFailed) as failed:
            s.runtime.call(
                "StartContainer",
                api_pb2.StartContainerRequest(pod=pod(), container=container(child.pid)),
                api_pb2.Empty(),
            )
        assert failed.value.code == wire.Code.UNKNOWN
        assert "no RT-DRA allocation for pod uid u1" in failed.value.message
        # PostStartContainer only logs (the runtime would too): no error goes back.
        s.runtime.call(
            "PostStartContainer",
            api_pb2.PostStartContainerRequest(pod=pod(), container=container(child.pid)),
            api_pb2.Empty(),
        )
    finally:
        s.close()


def test_synchronize_reserves_running_rt_containers_and_releases_what_the_runtime_no_longer_runs(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    enforcer = make_enforcer(tmp_path, "u1", "u2")
    enforcer.applied = {"u2": {"rt": Applied("none", "rt", "gone", child.pid, (SLOT,))}}  # from before a restart
    s = Session(Stub(tmp_path / "nri.sock", RtPlugin(enforcer)))
    try:
        s.runtime.handshake(
            pods=[pod("u1"), pod("u2")],
            containers=[container(child.pid, uid="u1"), container(0, cid="stopped", uid="u2")],
        )
        assert set(enforcer.applied) == {"u1"}
        assert enforcer.applied["u1"]["rt"].container_id == "c1"
    finally:
        s.close()


# -- what a broken peer gets ------------------------------------------------------------------------


def request_bytes(method: str, payload: bytes = b"", service: str = wire.PLUGIN_SERVICE) -> bytes:
    return ttrpc_pb2.Request(service=service, method=method, payload=payload).SerializeToString()


def test_malformed_requests_are_answered_with_ttrpc_s_own_errors_and_the_connection_lives(session: Session) -> None:
    runtime = session.runtime
    runtime.handshake()
    assert runtime.raw_call(101, b"\xff\xff\xff").status.code == wire.Code.INVALID_ARGUMENT  # not a Request
    assert runtime.raw_call(103, request_bytes("Frobnicate")).status.code == wire.Code.UNIMPLEMENTED
    assert runtime.raw_call(105, request_bytes("Configure", service="x.Y")).status.code == wire.Code.UNIMPLEMENTED
    bad_payload = runtime.raw_call(107, request_bytes("CreateContainer", b"\x0a\xff"))
    assert bad_payload.status.code == wire.Code.INVALID_ARGUMENT
    assert runtime.raw_call(108, request_bytes("Shutdown")).status.code == wire.Code.INVALID_ARGUMENT  # even stream id
    assert (
        runtime.raw_call(99, request_bytes("Shutdown")).status.message
        == "StreamID cannot be re-used and must increment"
    )
    runtime.send_raw(wire.mux_frames(1, wire.ttrpc_frame(109, wire.MessageType.DATA, b"x")))
    assert runtime.expect_response(109).status.code == wire.Code.INVALID_ARGUMENT
    runtime.send_raw(wire.mux_frames(1, wire.TTRPC_HEADER.pack(wire.MAX_MESSAGE + 1, 111, 1, 0)))
    runtime.send_raw(wire.mux_frames(1, bytes(wire.MAX_MESSAGE + 1)))
    assert runtime.expect_response(111).status.code == wire.Code.RESOURCE_EXHAUSTED
    runtime.send_raw(wire.mux_frames(7, b"to nobody"))  # an unknown mux connection: dropped
    runtime.send_raw(
        wire.mux_frames(2, wire.ttrpc_frame(41, wire.MessageType.RESPONSE, b""))
    )  # a response nobody awaits
    # Still serving, in step:
    runtime.next_stream = 113  # past the streams used by hand above
    reply = runtime.call(
        "CreateContainer",
        api_pb2.CreateContainerRequest(pod=pod(), container=container()),
        api_pb2.CreateContainerResponse(),
    )
    assert len(reply.adjust.env) == 4
    assert session.thread.is_alive()


def test_unframeable_bytes_close_the_connection_without_raising(session: Session) -> None:
    session.runtime.handshake()
    session.runtime.send_raw(wire.MUX_HEADER.pack(1, 0xFFFFFFFF))
    session.thread.join(5)
    assert not session.thread.is_alive() and session.result == [True]


def test_a_handler_that_raises_is_answered_unknown(session: Session) -> None:
    session.runtime.handshake()
    broken = pod()
    broken.uid = "u1"
    enforcer_of(session).release_container = None  # type: ignore[assignment, method-assign]
    with pytest.raises(CallFailed) as failed:
        session.runtime.call(
            "StopContainer",
            api_pb2.StopContainerRequest(pod=broken, container=container()),
            api_pb2.StopContainerResponse(),
        )
    assert failed.value.code == wire.Code.UNKNOWN


# -- time ------------------------------------------------------------------------------------------


class SlowPlugin(RtPlugin):
    def start_container(self, request: api_pb2.StartContainerRequest) -> None:
        time.sleep(1.0)


def test_a_slow_plugin_never_holds_the_runtime_beyond_its_request_timeout(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    s = Session(Stub(tmp_path / "nri.sock", SlowPlugin(make_enforcer(tmp_path, "u1"))), request_timeout_s=0.3)
    try:
        s.runtime.handshake()
        started = time.monotonic()
        with pytest.raises(PluginTimedOut):
            s.runtime.call(
                "StartContainer",
                api_pb2.StartContainerRequest(pod=pod(), container=container(child.pid)),
                api_pb2.Empty(),
            )
        assert time.monotonic() - started < 0.3 + 0.2
        s.thread.join(5)  # the runtime hung up: the session ends (run() would dial again)
        assert not s.thread.is_alive()
    finally:
        s.close()


def test_a_runtime_that_never_answers_registration_is_given_up_on(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    stub = Stub(tmp_path / "nri.sock", RtPlugin(make_enforcer(tmp_path)), registration_timeout_s=0.2)
    started = time.monotonic()
    try:
        assert stub.session(ours) is False
    finally:
        theirs.close()
    assert time.monotonic() - started < 1.0


def test_a_refused_registration_ends_the_session_with_the_runtime_s_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ours, theirs = socket.socketpair()
    runtime = FakeRuntime(theirs)
    runtime.refuse_registration = "invalid plugin index"
    try:
        assert Stub(tmp_path / "nri.sock", RtPlugin(make_enforcer(tmp_path))).session(ours) is False
    finally:
        runtime.close()
    assert "UNKNOWN: invalid plugin index" in caplog.text


def test_the_stub_dials_again_when_the_runtime_restarts(tmp_path: Path, child: subprocess.Popen[bytes]) -> None:
    path = tmp_path / "nri.sock"
    enforcer = make_enforcer(tmp_path, "u1")
    stub = Stub(path, RtPlugin(enforcer))
    stub.backoff_min_s = 0.05
    stop = threading.Event()
    runner = threading.Thread(target=stub.run, args=(stop,), daemon=True)
    runner.start()  # before the socket exists: it keeps trying
    try:
        time.sleep(0.2)
        for generation in range(2):  # a runtime, then the same runtime restarted
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(1)
            listener.settimeout(5)
            conn, _ = listener.accept()
            runtime = FakeRuntime(conn)
            runtime.handshake(pods=[pod()], containers=[container(child.pid)])
            assert enforcer.applied["u1"]["rt"].pid == child.pid, generation
            runtime.close()
            listener.close()
            path.unlink()
    finally:
        stop.set()
        runner.join(5)
    assert not runner.is_alive()


# -- choosing the mode ------------------------------------------------------------------------------


def test_mode_and_socket_come_from_flags_or_the_environment() -> None:
    assert (parse_args(["--node-name", "n"], env={}).mode, parse_args(["--node-name", "n"], env={}).nri_socket) == (
        "auto",
        Path("/var/run/nri/nri.sock"),
    )
    config = parse_args(["--node-name", "n"], env={"RTDRA_AGENT_MODE": "nri", "RTDRA_AGENT_NRI_SOCKET": "/x/nri.sock"})
    assert (config.mode, config.nri_socket) == ("nri", Path("/x/nri.sock"))
    with pytest.raises(SystemExit):
        parse_args(["--node-name", "n", "--mode", "both"], env={})


def test_auto_uses_nri_only_where_the_socket_exists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    enforcer = make_enforcer(tmp_path)
    path = tmp_path / "nri.sock"
    config = parse_args(["--node-name", "n", "--nri-socket", str(path)], env={})
    assert start_nri(config, enforcer) is None
    assert "mode auto: container starts come from the CDI hook (no NRI socket at" in caplog.text
    assert start_nri(replace(config, mode="cdi"), enforcer) is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        stop = start_nri(config, enforcer)
        assert stop is not None
        try:
            listener.settimeout(5)
            conn, _ = listener.accept()
            runtime = FakeRuntime(conn)
            runtime.handshake()
            runtime.close()
        finally:
            stop.set()
    assert f"mode auto: container starts come from the runtime over NRI at {path}" in caplog.text


def test_rt_containers_are_named_by_the_allocation_or_the_spec_annotation_and_malformed_ones_name_none() -> None:
    assert set(granted({names.ALLOCATION: ALLOCATION})) == {"rt"}
    assert granted({names.ALLOCATION: ALLOCATION})["rt"].env() == {
        "RT_RUNTIME_NS": "2000000",
        "RT_DEADLINE_NS": "10000000",
        "RT_PERIOD_NS": "10000000",
        "RT_CPUS": "1",
    }
    for bad in ("", "{", "[]", '{"containers": {"rt": {"cpus": "x"}}}', '{"containers": 3}'):
        assert granted({names.ALLOCATION: bad}) == {}
    assert requested({names.SPEC: '{"a": {"runtime": 1}, "b": {}}'}) == {"a", "b"}
    assert requested({names.SPEC: "not json"}) == frozenset()


def test_in_nri_mode_the_device_plugin_hands_out_slots_without_the_cdi_device() -> None:
    from agent._generated.deviceplugin.v1beta1 import api_pb2 as dp
    from agent.deviceplugin.service import DevicePluginService

    request = dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=["slot-0"])])
    with_hook = DevicePluginService(4).Allocate(request, None)  # type: ignore[arg-type]
    assert [d.name for d in with_hook.container_responses[0].cdi_devices] == [names.CDI_DEVICE_NAME]
    without = DevicePluginService(4, cdi_device=False).Allocate(request, None)  # type: ignore[arg-type]
    assert list(without.container_responses) == [dp.ContainerAllocateResponse()]  # no device, so no hook process
