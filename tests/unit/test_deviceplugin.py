"""The agent as a kubelet device plugin, against a fake kubelet built from the same generated protos.

The fake serves ``v1beta1.Registration`` on a real unix socket ``kubelet.sock``
in a temporary device-plugin directory; the tests then dial the plugin's socket
the way kubelet does and check what it answers. A kubelet restart is played as
kubelet does it: every plugin socket in the directory is deleted and a new
``kubelet.sock`` is created.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent import grpcserver
from agent._generated.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from agent.config import parse_args
from agent.deviceplugin import ENDPOINT, DevicePlugin
from agent.kubelet import DEVICE_PLUGIN_DEVICES
from rtdra import names

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 10.0


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    """kubelet's registration service; records each RegisterRequest. ``refuse`` answers the next ones UNAVAILABLE."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.requests: queue.Queue[api_pb2.RegisterRequest] = queue.Queue()
        self.refuse = 0
        self._server = grpcserver.UnixServer(
            directory / "kubelet.sock", lambda s: api_pb2_grpc.add_RegistrationServicer_to_server(self, s)
        )

    def Register(self, request: api_pb2.RegisterRequest, context: grpc.ServicerContext) -> api_pb2.Empty:
        if self.refuse > 0:
            self.refuse -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is not ready")
        self.requests.put(request)
        return api_pb2.Empty()

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=0)

    def restart(self) -> list[str]:
        """As kubelet starts: remove every socket in the directory, then listen on a new kubelet.sock.

        Returns the names of the sockets removed.
        """
        self.stop()
        removed = []
        for entry in self.directory.iterdir():
            if entry.is_socket():
                entry.unlink()
                removed.append(entry.name)
        self.start()
        return sorted(removed)

    def next_request(self) -> api_pb2.RegisterRequest:
        return self.requests.get(timeout=TIMEOUT_S)


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    # Short: a unix socket path must fit in 108 bytes, which pytest's tmp_path may not.
    directory = Path(tempfile.mkdtemp(prefix="rtdra-dp-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def kubelet(plugin_dir: Path) -> Iterator[FakeKubelet]:
    fake = FakeKubelet(plugin_dir)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def plugin(plugin_dir: Path) -> Iterator[DevicePlugin]:
    dp = DevicePlugin(plugin_dir, devices=8, poll_s=0.05, backoff_max_s=0.2)
    dp.start()
    yield dp
    dp.stop()


def dial_plugin(directory: Path, endpoint: str = ENDPOINT) -> Iterator[api_pb2_grpc.DevicePluginStub]:
    with grpcserver.dial(directory / endpoint) as channel:
        yield api_pb2_grpc.DevicePluginStub(channel)


@pytest.fixture
def as_kubelet(plugin_dir: Path, kubelet: FakeKubelet, plugin: DevicePlugin) -> Iterator[api_pb2_grpc.DevicePluginStub]:
    """A client of the plugin's socket, dialled after registration (as kubelet does)."""
    request = kubelet.next_request()
    yield from dial_plugin(plugin_dir, request.endpoint)


def first_update(stub: api_pb2_grpc.DevicePluginStub) -> api_pb2.ListAndWatchResponse:
    stream = stub.ListAndWatch(api_pb2.Empty(), timeout=TIMEOUT_S)
    try:
        return next(iter(stream))
    finally:
        stream.cancel()


def test_stubs_use_kubelets_service_and_method_names() -> None:
    # What goes on the wire: /v1beta1.Registration/Register etc., as in upstream api.proto (package v1beta1).
    services = api_pb2.DESCRIPTOR.services_by_name
    assert api_pb2.DESCRIPTOR.package == "v1beta1"
    assert [m.full_name for m in services["Registration"].methods] == ["v1beta1.Registration.Register"]
    assert [m.name for m in services["DevicePlugin"].methods] == [
        "GetDevicePluginOptions",
        "ListAndWatch",
        "GetPreferredAllocation",
        "Allocate",
        "PreStartContainer",
    ]
    assert api_pb2.ContainerAllocateResponse.DESCRIPTOR.fields_by_name["cdi_devices"].number == 5


def test_plugin_registers_the_routing_resource_with_kubelet(kubelet: FakeKubelet, plugin: DevicePlugin) -> None:
    request = kubelet.next_request()
    assert request == api_pb2.RegisterRequest(
        version="v1beta1",
        endpoint=ENDPOINT,
        resource_name=names.DL_RESOURCE,
        options=api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=False),
    )
    assert request.endpoint == "rtdra-agent.sock" and "/" not in request.endpoint  # relative to kubelet's dir
    assert (plugin.directory / request.endpoint).is_socket()


def test_plugin_options_ask_for_no_prestart_and_no_preferred_allocation(
    as_kubelet: api_pb2_grpc.DevicePluginStub,
) -> None:
    assert as_kubelet.GetDevicePluginOptions(api_pb2.Empty(), timeout=TIMEOUT_S) == api_pb2.DevicePluginOptions()


def test_list_and_watch_advertises_the_configured_number_of_healthy_slots(
    as_kubelet: api_pb2_grpc.DevicePluginStub,
) -> None:
    devices = first_update(as_kubelet).devices
    assert len(devices) == 8
    assert len({d.ID for d in devices}) == 8 and all(0 < len(d.ID) <= 63 for d in devices)
    assert {d.health for d in devices} == {"Healthy"}


def test_allocate_gives_each_requesting_container_exactly_our_cdi_device(
    as_kubelet: api_pb2_grpc.DevicePluginStub,
) -> None:
    ids = [d.ID for d in first_update(as_kubelet).devices]
    request = api_pb2.AllocateRequest(
        container_requests=[
            api_pb2.ContainerAllocateRequest(devices_ids=[ids[0]]),
            api_pb2.ContainerAllocateRequest(devices_ids=[ids[5]]),
        ]
    )
    response = as_kubelet.Allocate(request, timeout=TIMEOUT_S)
    assert len(response.container_responses) == 2
    for container in response.container_responses:
        assert [d.name for d in container.cdi_devices] == ["rt.resource.example.com/cpu=deadline"]
        assert container == api_pb2.ContainerAllocateResponse(
            cdi_devices=[api_pb2.CDIDevice(name=names.CDI_DEVICE_NAME)]
        )  # no env, mounts, device nodes or annotations: the hook does the rest


def test_prestart_and_preferred_allocation_are_answered_trivially(as_kubelet: api_pb2_grpc.DevicePluginStub) -> None:
    prestart = api_pb2.PreStartContainerRequest(devices_ids=["slot-1"])
    assert as_kubelet.PreStartContainer(prestart, timeout=TIMEOUT_S) == api_pb2.PreStartContainerResponse()
    preferred = api_pb2.PreferredAllocationRequest(
        container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=["slot-1", "slot-2", "slot-3"], must_include_deviceIDs=["slot-3"], allocation_size=2
            )
        ]
    )
    answer = as_kubelet.GetPreferredAllocation(preferred, timeout=TIMEOUT_S)
    assert [list(r.deviceIDs) for r in answer.container_responses] == [["slot-3", "slot-1"]]


def test_plugin_serves_and_registers_again_after_kubelet_restarts(
    plugin_dir: Path, kubelet: FakeKubelet, plugin: DevicePlugin
) -> None:
    kubelet.next_request()
    # The plugin's socket went with the restart (whether the plugin has served it again already is a race).
    assert kubelet.restart() == [ENDPOINT]
    again = kubelet.next_request()
    assert again.endpoint == ENDPOINT and again.resource_name == names.DL_RESOURCE
    for stub in dial_plugin(plugin_dir):
        assert len(first_update(stub).devices) == 8
    assert plugin.registrations == 2


def test_plugin_waits_for_kubelet_and_retries_a_refused_registration(plugin_dir: Path, plugin: DevicePlugin) -> None:
    time.sleep(0.3)
    assert list(plugin_dir.iterdir()) == []  # nothing is created before kubelet's socket exists
    fake = FakeKubelet(plugin_dir)
    fake.refuse = 2
    fake.start()
    try:
        assert fake.next_request().resource_name == names.DL_RESOURCE
        assert fake.refuse == 0 and plugin.registered.wait(TIMEOUT_S)
    finally:
        fake.stop()


def test_a_new_kubelet_is_registered_with_at_once_not_after_the_backoff(plugin_dir: Path) -> None:
    dp = DevicePlugin(plugin_dir, devices=2, poll_s=0.05, backoff_max_s=60.0)
    dead = FakeKubelet(plugin_dir)
    dead.refuse = 1_000  # a kubelet that refuses: the plugin backs off towards a minute
    dead.start()
    dp.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while 1_000 - dead.refuse < 7:  # refused at 0, .05, .15, .35, .75, 1.55, 3.15 s: the next try is 3.2 s away
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert dp.registrations == 0
        dead.stop()
        fresh = FakeKubelet(plugin_dir)  # kubelet restarted: a new kubelet.sock
        fresh.start()
        try:
            started = time.monotonic()
            assert fresh.next_request().resource_name == names.DL_RESOURCE
            assert time.monotonic() - started < 2.0  # a poll (0.05 s) and a call, with room for a loaded machine
        finally:
            fresh.stop()
    finally:
        dp.stop()


def test_stop_ends_the_stream_and_removes_the_plugin_socket(
    plugin_dir: Path, kubelet: FakeKubelet, plugin: DevicePlugin
) -> None:
    kubelet.next_request()
    for stub in dial_plugin(plugin_dir):
        stream = stub.ListAndWatch(api_pb2.Empty(), timeout=TIMEOUT_S)
        updates = iter(stream)
        next(updates)
        started = time.monotonic()
        plugin.stop()
        with pytest.raises((grpc.RpcError, StopIteration)):
            next(updates)  # kubelet sees the stream end: the plugin is gone
        assert time.monotonic() - started < 5
    assert not (plugin_dir / ENDPOINT).exists()
    assert (plugin_dir / "kubelet.sock").exists()  # kubelet's socket is not ours to remove


# -- configuration --------------------------------------------------------------------------------------------


def test_device_plugin_is_on_in_kubelets_directory_where_the_agent_enforces(tmp_path: Path) -> None:
    config = parse_args(["--node-name", "n", "--backend", "deadline"], env={})
    assert config.device_plugin_dir == Path("/var/lib/kubelet/device-plugins")
    assert config.device_plugin_devices == DEVICE_PLUGIN_DEVICES == DevicePlugin(tmp_path).service.count


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--backend", "none"], {}, None),  # simulated nodes: no kubelet of theirs on this host
        (["--backend", "none", "--device-plugin-dir", "/tmp/dp"], {}, Path("/tmp/dp")),
        (["--backend", "deadline"], {"RTDRA_AGENT_DEVICE_PLUGIN_DIR": "/k/dp"}, Path("/k/dp")),
        # a blank variable means "not set" for every RT-DRA setting (rtdra.settings): the default
        (["--backend", "deadline"], {"RTDRA_AGENT_DEVICE_PLUGIN_DIR": ""}, Path("/var/lib/kubelet/device-plugins")),
        (["--backend", "deadline", "--device-plugin-dir", ""], {}, None),
        (["--backend", "deadline", "--no-device-plugin"], {}, None),
        (["--backend", "hcbs"], {"RTDRA_AGENT_NO_DEVICE_PLUGIN": "true"}, None),
    ],
)
def test_device_plugin_directory_flags_and_environment(argv: list[str], env: dict[str, str], expected: Path) -> None:
    assert parse_args(["--node-name", "n", *argv], env=env).device_plugin_dir == expected


def test_device_plugin_slot_count_is_configurable() -> None:
    assert parse_args(["--node-name", "n", "--device-plugin-devices", "32"], env={}).device_plugin_devices == 32
    env = {"RTDRA_AGENT_DEVICE_PLUGIN_DEVICES": "1000"}
    assert parse_args(["--node-name", "n"], env=env).device_plugin_devices == 1000


# -- the agent --------------------------------------------------------------------------------------------------


def test_the_agent_registers_its_device_plugin_and_removes_it_on_sigterm(
    plugin_dir: Path, kubelet: FakeKubelet, tmp_path: Path
) -> None:
    argv = [sys.executable, "-m", "agent.cli", "--node-name", "dp-node", "--backend", "none", "--cpus", "2"]
    argv += ["--capacity", "900000", "--nas-file", str(tmp_path / "nas.json"), "--state-dir", str(tmp_path / "st")]
    argv += ["--cdi-dir", str(tmp_path / "cdi"), "--hook-dir", str(tmp_path / "hooks")]
    argv += ["--hook-python", sys.executable, "--device-plugin-dir", str(plugin_dir)]
    argv += ["--device-plugin-devices", "4"]
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        agent = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        try:
            request = kubelet.next_request()
        except queue.Empty:
            pytest.fail(f"the agent did not register: {log.read_text()}")
        assert (request.version, request.endpoint, request.resource_name) == ("v1beta1", ENDPOINT, names.DL_RESOURCE)
        for stub in dial_plugin(plugin_dir):
            assert len(first_update(stub).devices) == 4
            allocation = stub.Allocate(
                api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["slot-0"])]),
                timeout=TIMEOUT_S,
            )
            assert [d.name for c in allocation.container_responses for d in c.cdi_devices] == [names.CDI_DEVICE_NAME]
        # The device it hands out is the one the agent's CDI spec defines.
        assert (tmp_path / "cdi" / "rt.resource.example.com-cpu-dp-node.json").exists()
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
    assert code == 0, log.read_text()
    assert not (plugin_dir / ENDPOINT).exists(), log.read_text()
