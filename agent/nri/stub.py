"""Dialing the runtime's NRI socket, the handshake, and dialing again when the runtime restarts.

The handshake (NRI ``pkg/stub`` and ``pkg/adaptation``, v0.12.3): the plugin dials the socket
and calls ``Runtime/RegisterPlugin(name, index)``; the runtime then calls ``Plugin/Configure``
(its name and version, its timeouts; the plugin answers the events it wants, a bit mask over
:class:`api_pb2.Event` with bit ``event - 1``) and ``Plugin/Synchronize`` (every pod and
container it knows, possibly split over several calls with ``more`` set - each answered with
``more`` and no updates, the last with the updates). Only then does the runtime send events.

Timeouts: the runtime gives a plugin 5 s to register and 2 s for each request (its defaults,
overridden by the Configure request); a request not answered in time is fatal to the
connection - the runtime closes it and goes on without the plugin. Our RegisterPlugin call uses
the registration timeout; a runtime that does not configure us within that and one request
timeout more is hung up on. Every lost connection (the runtime restarted, or gave up on us) is
dialed again after a backoff that doubles from :attr:`Stub.backoff_min_s` to
:attr:`Stub.backoff_max_s` and starts over once a connection is configured; a missing socket
counts as a lost connection.

Which handlers exist is the :class:`Handlers` protocol; requests for Plugin methods it does not
implement are answered with an empty reply, as upstream's stub does (an UNIMPLEMENTED answer
would make the runtime retry post-events over the deprecated StateChange call).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.message_factory import GetMessageClass

from agent._generated.nri import api_pb2
from agent.nri import wire
from agent.nri.ttrpc import Connection, ConnectionClosed, RpcError
from agent.nri.wire import Code

log = logging.getLogger(__name__)

NRI_VERSION: Final = "v0.12.3"
DEFAULT_SOCKET: Final = Path("/var/run/nri/nri.sock")
#: api.DefaultPluginRegistrationTimeout and api.DefaultPluginRequestTimeout.
REGISTRATION_TIMEOUT_S: Final = 5.0
REQUEST_TIMEOUT_S: Final = 2.0

_PLUGIN: Final = api_pb2.DESCRIPTOR.services_by_name["Plugin"]


def event_mask(events: Sequence[int]) -> int:
    """The Configure answer for these :class:`api_pb2.Event` values (``EventMask.Set``: bit ``event - 1``)."""
    mask = 0
    for event in events:
        mask |= 1 << (event - 1)
    return mask


class Handlers(Protocol):
    """What a plugin does with the runtime's calls; each returns the reply or raises :class:`RpcError`."""

    events: Sequence[int]

    def configure(self, request: api_pb2.ConfigureRequest) -> None: ...

    def synchronize(
        self, pods: Sequence[api_pb2.PodSandbox], containers: Sequence[api_pb2.Container]
    ) -> list[api_pb2.ContainerUpdate]: ...

    def create_container(self, request: api_pb2.CreateContainerRequest) -> api_pb2.CreateContainerResponse: ...

    def start_container(self, request: api_pb2.StartContainerRequest) -> None: ...

    def post_start_container(self, request: api_pb2.PostStartContainerRequest) -> None: ...

    def stop_container(self, request: api_pb2.StopContainerRequest) -> None: ...

    def remove_container(self, request: api_pb2.RemoveContainerRequest) -> None: ...

    def remove_pod_sandbox(self, request: api_pb2.RemovePodSandboxRequest) -> None: ...

    def shutdown(self) -> None: ...


class Stub:
    """Keeps the agent connected to the runtime as NRI plugin ``<index>-<name>``."""

    backoff_min_s: float = 0.5
    backoff_max_s: float = 10.0

    def __init__(
        self,
        socket_path: Path,
        handlers: Handlers,
        *,
        name: str = "rtdra",
        index: str = "10",
        registration_timeout_s: float = REGISTRATION_TIMEOUT_S,
    ) -> None:
        self.socket_path = socket_path
        self.handlers = handlers
        self.name = name
        self.index = index
        self.registration_timeout_s = registration_timeout_s
        self.request_timeout_s = REQUEST_TIMEOUT_S
        #: Set while configured and synchronised with a runtime (tests and health read it).
        self.synchronized = threading.Event()
        self.connection: Connection | None = None
        self._configured = threading.Event()
        self._sync_pods: list[api_pb2.PodSandbox] = []
        self._sync_containers: list[api_pb2.Container] = []
        self._methods: dict[str, Callable[[ProtoMessage], ProtoMessage | None]] = {
            "Configure": self._configure,
            "Synchronize": self._synchronize,
            "Shutdown": lambda _: self.handlers.shutdown(),
            "CreateContainer": self.handlers.create_container,  # type: ignore[dict-item]
            "StartContainer": self.handlers.start_container,  # type: ignore[dict-item]
            "PostStartContainer": self.handlers.post_start_container,  # type: ignore[dict-item]
            "StopContainer": self.handlers.stop_container,  # type: ignore[dict-item]
            "RemoveContainer": self.handlers.remove_container,  # type: ignore[dict-item]
            "RemovePodSandbox": self.handlers.remove_pod_sandbox,  # type: ignore[dict-item]
        }

    # -- running --------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Stay connected until ``stop`` is set."""
        backoff = self.backoff_min_s
        last_error = ""
        while not stop.is_set():
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(str(self.socket_path))
                except OSError:
                    sock.close()
                    raise
                configured = self.session(sock, stop)
            except (OSError, RpcError) as err:
                # Said once, not at every retry (a runtime without NRI would fill the log).
                level = logging.DEBUG if str(err) == last_error else logging.INFO
                log.log(
                    level,
                    "NRI: no connection to %s: %s; trying again (every <= %g s)",
                    self.socket_path,
                    err,
                    self.backoff_max_s,
                )
                last_error, configured = str(err), False
            if configured:
                backoff, last_error = self.backoff_min_s, ""
            if stop.wait(backoff):
                break
            if not configured:
                backoff = min(backoff * 2, self.backoff_max_s)

    def session(self, sock: socket.socket, stop: threading.Event | None = None) -> bool:
        """One connection, from registration to its end; whether the runtime configured us."""
        self._configured.clear()
        self.synchronized.clear()
        self._sync_pods, self._sync_containers = [], []
        conn = Connection(sock, self._serve)
        self.connection = conn
        conn.start()
        try:
            try:
                conn.call(
                    "RegisterPlugin",
                    api_pb2.RegisterPluginRequest(
                        plugin_name=self.name, plugin_idx=self.index, NRI_version=NRI_VERSION
                    ),
                    api_pb2.Empty(),
                    self.registration_timeout_s,
                )
            except (RpcError, ConnectionClosed) as err:
                log.warning("NRI: registering as %s-%s at %s failed: %s", self.index, self.name, self.socket_path, err)
                return False
            log.info("NRI: registered as %s-%s at %s", self.index, self.name, self.socket_path)
            configure_by = time.monotonic() + self.registration_timeout_s + self.request_timeout_s
            while not self._configured.wait(0.05) and not conn.closed.is_set():
                if time.monotonic() > configure_by:
                    log.warning("NRI: the runtime registered us but did not configure us; hanging up")
                    return False
            while not conn.wait_closed(0.5):
                if stop is not None and stop.is_set():
                    break
            log.info("NRI: the connection to %s closed", self.socket_path)
            return self._configured.is_set()
        finally:
            conn.close()
            self.synchronized.clear()
            self.connection = None

    # -- serving --------------------------------------------------------------

    def _serve(self, service: str, method: str, payload: bytes, deadline: float | None) -> bytes:
        if service != wire.PLUGIN_SERVICE:
            raise RpcError(Code.UNIMPLEMENTED, f"service {service}")
        described = _PLUGIN.methods_by_name.get(method)
        if described is None:
            raise RpcError(Code.UNIMPLEMENTED, f"method {method}")
        request = GetMessageClass(described.input_type)()
        try:
            request.ParseFromString(payload)
        except DecodeError as err:
            raise RpcError(
                Code.INVALID_ARGUMENT, f"{method}: the request is not a {described.input_type.name}: {err}"
            ) from None
        handler = self._methods.get(method)
        reply = handler(request) if handler is not None else None
        if reply is None:
            reply = GetMessageClass(described.output_type)()
        return reply.SerializeToString()

    def _configure(self, request: ProtoMessage) -> api_pb2.ConfigureResponse:
        assert isinstance(request, api_pb2.ConfigureRequest)
        if request.registration_timeout > 0:
            self.registration_timeout_s = request.registration_timeout / 1000
        if request.request_timeout > 0:
            self.request_timeout_s = request.request_timeout / 1000
        log.info(
            "NRI: configured by %s %s (NRI %s; timeouts: registration %g s, request %g s)",
            request.runtime_name,
            request.runtime_version,
            request.NRI_version or "unknown",
            self.registration_timeout_s,
            self.request_timeout_s,
        )
        self.handlers.configure(request)
        self._configured.set()
        return api_pb2.ConfigureResponse(events=event_mask(self.handlers.events))

    def _synchronize(self, request: ProtoMessage) -> api_pb2.SynchronizeResponse:
        assert isinstance(request, api_pb2.SynchronizeRequest)
        self._sync_pods.extend(request.pods)
        self._sync_containers.extend(request.containers)
        if request.more:  # a split Synchronize: collect, answer nothing yet (the runtime insists)
            return api_pb2.SynchronizeResponse(more=True)
        pods, containers = self._sync_pods, self._sync_containers
        self._sync_pods, self._sync_containers = [], []
        started = time.monotonic()
        updates = self.handlers.synchronize(pods, containers)
        log.info(
            "NRI: synchronized with %d pod(s), %d container(s) in %.1f ms",
            len(pods),
            len(containers),
            (time.monotonic() - started) * 1000,
        )
        self.synchronized.set()
        return api_pb2.SynchronizeResponse(update=updates, more=False)
