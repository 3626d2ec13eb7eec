"""A stand-in for the container runtime's side of NRI, for tests and benchmarks of the agent's plugin.

It plays what NRI's ``pkg/adaptation`` (v0.12.3) does with an external plugin: on a connected
unix socket it serves ``nri.pkg.api.v1alpha1.Runtime`` (RegisterPlugin, UpdateContainers) on mux
connection 2, waits up to the registration timeout for the plugin to register, then calls
Configure and Synchronize and, afterwards, events on connection 1 - each with the request
timeout, and, like the real runtime, it hangs up on a plugin that lets a request time out.
It uses the same generated messages as the agent; the framing is :mod:`agent.nri.wire`, whose
bytes the protocol tests pin down independently.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import Message as ProtoMessage

from agent._generated.nri import api_pb2, ttrpc_pb2
from agent.nri import wire

Reply = TypeVar("Reply", bound=ProtoMessage)


class CallFailed(RuntimeError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"status {code}: {message}")
        self.code = code
        self.message = message


class PluginTimedOut(TimeoutError):
    """The plugin did not answer in time; the connection has been closed (as the runtime does)."""


@dataclass
class _Call:
    done: threading.Event = field(default_factory=threading.Event)
    response: ttrpc_pb2.Response | None = None


class FakeRuntime:
    def __init__(
        self, sock: socket.socket, *, registration_timeout_s: float = 5.0, request_timeout_s: float = 2.0
    ) -> None:
        self.sock = sock
        #: When set, RegisterPlugin is refused with this message (as the adaptation refuses a bad name).
        self.refuse_registration = ""
        self.registration_timeout_s = registration_timeout_s
        self.request_timeout_s = request_timeout_s
        self.registered = threading.Event()
        self.registration: api_pb2.RegisterPluginRequest | None = None
        self.events = 0
        self.closed = threading.Event()
        self._calls: dict[int, _Call] = {}
        self.next_stream = 1
        self._lock = threading.Lock()
        self._write = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="fake-runtime", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with self._lock:
            for call in self._calls.values():
                call.done.set()

    def send_raw(self, data: bytes) -> None:
        with self._write:
            self.sock.sendall(data)

    def _send(self, conn: int, stream: int, kind: wire.MessageType, payload: bytes) -> None:
        self.send_raw(wire.mux_frames(conn, wire.ttrpc_frame(stream, kind, payload)))

    # -- the runtime's calls to the plugin ------------------------------------

    def call(self, method: str, request: ProtoMessage, reply: Reply, timeout: float | None = None) -> Reply:
        timeout = self.request_timeout_s if timeout is None else timeout
        with self._lock:
            stream, self.next_stream = self.next_stream, self.next_stream + 2
            call = self._calls[stream] = _Call()
        req = ttrpc_pb2.Request(
            service=wire.PLUGIN_SERVICE,
            method=method,
            payload=request.SerializeToString(),
            timeout_nano=int(timeout * 1e9),
        )
        self._send(wire.PLUGIN_SERVICE_CONN, stream, wire.MessageType.REQUEST, req.SerializeToString())
        answered = call.done.wait(timeout)
        with self._lock:
            self._calls.pop(stream, None)
        if not answered:
            self.close()  # context.DeadlineExceeded is fatal to the plugin's connection (adaptation.isFatalError)
            raise PluginTimedOut(f"{method}: no answer within {timeout} s")
        if call.response is None:
            raise ConnectionError(f"{method}: the plugin closed the connection")
        if call.response.status.code:
            raise CallFailed(call.response.status.code, call.response.status.message)
        reply.ParseFromString(call.response.payload)
        return reply

    def raw_call(self, stream: int, payload: bytes, timeout: float = 2.0) -> ttrpc_pb2.Response:
        """Send ``payload`` as a request on ``stream`` as is (malformed on purpose); the plugin's response."""
        with self._lock:
            call = self._calls[stream] = _Call()
        self._send(wire.PLUGIN_SERVICE_CONN, stream, wire.MessageType.REQUEST, payload)
        if not call.done.wait(timeout) or call.response is None:
            raise TimeoutError(f"no response on stream {stream}")
        with self._lock:
            self._calls.pop(stream, None)
        return call.response

    def expect_response(self, stream: int, timeout: float = 2.0) -> ttrpc_pb2.Response:
        """Wait for a response on ``stream`` to something sent with :meth:`send_raw`."""
        with self._lock:
            call = self._calls.setdefault(stream, _Call())
        if not call.done.wait(timeout) or call.response is None:
            raise TimeoutError(f"no response on stream {stream}")
        with self._lock:
            self._calls.pop(stream, None)
        return call.response

    def handshake(
        self,
        pods: Sequence[api_pb2.PodSandbox] = (),
        containers: Sequence[api_pb2.Container] = (),
        *,
        runtime: tuple[str, str] = ("fake-runtime", "v0.0.0"),
    ) -> api_pb2.SynchronizeResponse:
        """What the adaptation does with a new connection: registration, Configure, Synchronize."""
        if not self.registered.wait(self.registration_timeout_s):
            self.close()
            raise PluginTimedOut("plugin registration timed out")
        configured = self.call(
            "Configure",
            api_pb2.ConfigureRequest(
                runtime_name=runtime[0],
                runtime_version=runtime[1],
                registration_timeout=int(self.registration_timeout_s * 1000),
                request_timeout=int(self.request_timeout_s * 1000),
                NRI_version="v0.12.3",
            ),
            api_pb2.ConfigureResponse(),
        )
        self.events = configured.events
        return self.call(
            "Synchronize", api_pb2.SynchronizeRequest(pods=pods, containers=containers), api_pb2.SynchronizeResponse()
        )

    def subscribed(self, event: int) -> bool:
        return bool(self.events & (1 << (event - 1)))

    # -- reading ----------------------------------------------------------------

    def _read(self) -> None:
        mux = wire.MuxReader()
        streams = {wire.PLUGIN_SERVICE_CONN: wire.MessageReader(), wire.RUNTIME_SERVICE_CONN: wire.MessageReader()}
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                for conn, chunk in mux.feed(data):
                    for message in streams[conn].feed(chunk):
                        if conn == wire.PLUGIN_SERVICE_CONN:
                            self._on_response(message)
                        else:
                            self._on_request(message)
        except (OSError, ValueError):
            pass
        finally:
            self.closed.set()
            with self._lock:
                for call in self._calls.values():
                    call.done.set()

    def _on_response(self, message: wire.Message) -> None:
        response = ttrpc_pb2.Response()
        response.ParseFromString(message.payload)
        with self._lock:  # kept for expect_response() if it comes before anyone waits for it
            call = self._calls.setdefault(message.stream_id, _Call())
        call.response = response
        call.done.set()

    def _on_request(self, message: wire.Message) -> None:
        request = ttrpc_pb2.Request()
        request.ParseFromString(message.payload)
        response = ttrpc_pb2.Response()
        if (request.service, request.method) == (wire.RUNTIME_SERVICE, "RegisterPlugin") and self.refuse_registration:
            response.status.code = wire.Code.UNKNOWN
            response.status.message = self.refuse_registration
        elif (request.service, request.method) == (wire.RUNTIME_SERVICE, "RegisterPlugin"):
            self.registration = api_pb2.RegisterPluginRequest.FromString(request.payload)
            response.payload = api_pb2.Empty().SerializeToString()
            self.registered.set()
        elif (request.service, request.method) == (wire.RUNTIME_SERVICE, "UpdateContainers"):
            response.payload = api_pb2.UpdateContainersResponse().SerializeToString()
        else:
            response.status.code = wire.Code.UNIMPLEMENTED
            response.status.message = f"method {request.method}"
        self._send(
            wire.RUNTIME_SERVICE_CONN, message.stream_id, wire.MessageType.RESPONSE, response.SerializeToString()
        )
