"""One ttrpc connection to the NRI runtime, both ways, over the multiplexed socket.

On mux connection 1 the runtime is the ttrpc client and we serve ``nri.pkg.api.v1alpha1.Plugin``;
on connection 2 we are the client of ``nri.pkg.api.v1alpha1.Runtime``. A reader thread reads the
socket and serves each request itself, in order. ttrpc's Go server runs a goroutine per request,
but the runtime makes one call to a plugin at a time (NRI's adaptation holds its lock across each
event), so nothing ever waits behind a request; and a thread per request cost more than the
whole call otherwise does here (``bench/bench_nri.py``: 1.4 -> 0.6 ms for a call that finds nothing
to do). A handler that overruns the runtime's request timeout gets the connection dropped by the
runtime, and the stub dials again. Writes are serialised by a lock.

What the peer gets wrong is answered as ttrpc's own server (``server.go``, v1.2.7) answers it,
with an error status on the same stream and the connection kept: an even stream id, a reused
one, a data frame (we serve unary calls only), a payload that is not a ``Request``, a message
over 4 MiB (RESOURCE_EXHAUSTED), an unknown service or method (UNIMPLEMENTED). Frames on an
unknown mux connection, responses nobody waits for and unknown message types are logged and
dropped. Only bytes that cannot be framed at all (a mux frame longer than any upstream sends)
close the connection; the stub then dials again. Nothing a peer sends raises out of the reader.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from agent._generated.nri import ttrpc_pb2
from agent.nri import wire
from agent.nri.wire import Code, MessageType

log = logging.getLogger(__name__)

Reply = TypeVar("Reply", bound=ProtoMessage)


class RpcError(Exception):
    """A call failed with a ttrpc status: raised by handlers (to answer it) and by :meth:`Connection.call`."""

    def __init__(self, code: Code | int, message: str) -> None:
        super().__init__(message)
        try:
            self.code: Code | int = Code(code)
        except ValueError:  # a status code newer than our table: kept as the number
            self.code = code
        self.message = message

    def __str__(self) -> str:
        name = self.code.name if isinstance(self.code, Code) else str(self.code)
        return f"{name}: {self.message}"


class ConnectionClosed(ConnectionError):
    """The connection to the runtime is gone."""


#: Serves one call: (service, method, request payload, deadline as time.monotonic() or None) -> reply payload.
#: Raises :class:`RpcError` to answer with an error status.
Serve = Callable[[str, str, bytes, float | None], bytes]


@dataclass
class _Pending:
    done: threading.Event = field(default_factory=threading.Event)
    response: ttrpc_pb2.Response | None = None


class Connection:
    """A connected NRI socket. :meth:`start` the reader; :meth:`call` the runtime; :meth:`close` when done."""

    def __init__(self, sock: socket.socket, serve: Serve, *, recv_size: int = 65536) -> None:
        self.sock = sock
        self.serve = serve
        self.recv_size = recv_size
        self.closed = threading.Event()
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._next_stream = 1
        self._last_served = 0
        self._mux = wire.MuxReader()
        self._streams = {
            wire.PLUGIN_SERVICE_CONN: wire.MessageReader(),
            wire.RUNTIME_SERVICE_CONN: wire.MessageReader(),
        }
        self._reader: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        self._reader = threading.Thread(target=self._read_loop, name="nri-reader", daemon=True)
        self._reader.start()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._state_lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for p in pending:
            p.done.set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self.closed.wait(timeout)

    # -- the plugin's calls to the runtime ------------------------------------

    def call(self, method: str, request: ProtoMessage, reply: Reply, timeout: float) -> Reply:
        """Call ``nri.pkg.api.v1alpha1.Runtime/<method>``; parses the answer into ``reply``.

        Raises :class:`RpcError` for an error status or no answer within ``timeout`` seconds
        (DEADLINE_EXCEEDED), :class:`ConnectionClosed` when the connection goes.
        """
        pending = _Pending()
        with self._state_lock:
            stream_id = self._next_stream
            self._next_stream += 2
            self._pending[stream_id] = pending
        req = ttrpc_pb2.Request(
            service=wire.RUNTIME_SERVICE,
            method=method,
            payload=request.SerializeToString(),
            timeout_nano=int(timeout * 1e9),
        )
        try:
            self._send(wire.RUNTIME_SERVICE_CONN, stream_id, MessageType.REQUEST, req.SerializeToString())
            if not pending.done.wait(timeout):
                raise RpcError(Code.DEADLINE_EXCEEDED, f"{method}: no answer from the runtime within {timeout:g} s")
        finally:
            with self._state_lock:
                self._pending.pop(stream_id, None)
        response = pending.response
        if response is None:
            raise ConnectionClosed(f"{method}: the connection to the runtime closed")
        if response.status.code != Code.OK:
            raise RpcError(response.status.code, response.status.message)
        try:
            reply.ParseFromString(response.payload)
        except DecodeError as err:
            raise RpcError(
                Code.INTERNAL, f"{method}: the runtime's reply is not a {type(reply).__name__}: {err}"
            ) from None
        return reply

    # -- writing --------------------------------------------------------------

    def _send(self, conn_id: int, stream_id: int, kind: MessageType, payload: bytes) -> None:
        data = wire.mux_frames(conn_id, wire.ttrpc_frame(stream_id, kind, payload))
        with self._write_lock:
            if self.closed.is_set():
                raise ConnectionClosed("the connection to the runtime is closed")
            try:
                self.sock.sendall(data)
            except OSError as err:
                self.close()
                raise ConnectionClosed(f"writing to the runtime: {err}") from None

    def _answer(self, stream_id: int, code: Code | int, message: str = "", payload: bytes = b"") -> None:
        response = ttrpc_pb2.Response(payload=payload)
        response.status.code = int(code)
        response.status.message = message
        try:
            self._send(wire.PLUGIN_SERVICE_CONN, stream_id, MessageType.RESPONSE, response.SerializeToString())
        except ConnectionClosed:
            log.info("NRI: could not answer stream %d: the connection closed", stream_id)

    def _refuse(self, stream_id: int, code: Code, message: str) -> None:
        log.warning("NRI: refusing a message on stream %d: %s", stream_id, message)
        self._answer(stream_id, code, message)

    # -- reading --------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while not self.closed.is_set():
                try:
                    data = self.sock.recv(self.recv_size)
                except OSError as err:
                    if not self.closed.is_set():
                        log.info("NRI: reading from the runtime: %s", err)
                    return
                if not data:
                    log.info("NRI: the runtime closed the connection")
                    return
                for conn_id, chunk in self._mux.feed(data):
                    stream = self._streams.get(conn_id)
                    if stream is None:
                        log.warning("NRI: dropping %d bytes on unknown mux connection %d", len(chunk), conn_id)
                        continue
                    for message in stream.feed(chunk):
                        if conn_id == wire.PLUGIN_SERVICE_CONN:
                            self._on_request(message)
                        else:
                            self._on_response(message)
        except wire.ProtocolError as err:
            log.error("NRI: closing the connection: %s", err)
        except Exception:  # a bug of ours must not kill the agent: drop the connection, the stub dials again
            log.exception("NRI: reader failed")
        finally:
            self.close()

    def _on_request(self, message: wire.Message) -> None:
        sid = message.stream_id
        if message.oversized:
            self._refuse(
                sid, Code.RESOURCE_EXHAUSTED, f"message length exceeds maximum message size of {wire.MAX_MESSAGE}"
            )
            return
        if sid % 2 != 1:
            self._refuse(sid, Code.INVALID_ARGUMENT, "StreamID must be odd for client initiated streams")
            return
        if message.kind == MessageType.DATA:
            self._refuse(sid, Code.INVALID_ARGUMENT, "StreamID is no longer active")
            return
        if message.kind != MessageType.REQUEST:
            log.warning("NRI: ignoring a message of type %d on stream %d of the plugin service", message.kind, sid)
            return
        if sid <= self._last_served:
            self._refuse(sid, Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
            return
        self._last_served = sid
        request = ttrpc_pb2.Request()
        try:
            request.ParseFromString(message.payload)
        except DecodeError as err:
            self._refuse(sid, Code.INVALID_ARGUMENT, f"unmarshal request error: {err}")
            return
        deadline = time.monotonic() + request.timeout_nano / 1e9 if request.timeout_nano > 0 else None
        self._serve_one(sid, request, deadline)

    def _serve_one(self, stream_id: int, request: ttrpc_pb2.Request, deadline: float | None) -> None:
        try:
            payload = self.serve(request.service, request.method, request.payload, deadline)
        except RpcError as err:
            self._answer(stream_id, err.code, err.message)
            return
        except Exception as err:  # answered like a Go handler's plain error (codes.Unknown), never raised
            log.exception("NRI: %s/%s failed", request.service, request.method)
            self._answer(stream_id, Code.UNKNOWN, f"rtdra-agent: {err}")
            return
        if deadline is not None and time.monotonic() > deadline:
            log.warning("NRI: %s answered after the runtime's deadline (it has given up)", request.method)
        self._answer(stream_id, Code.OK, payload=payload)

    def _on_response(self, message: wire.Message) -> None:
        if message.kind != MessageType.RESPONSE:
            log.warning(
                "NRI: ignoring a message of type %d on stream %d of the runtime service",
                message.kind,
                message.stream_id,
            )
            return
        with self._state_lock:
            pending = self._pending.get(message.stream_id)
        if pending is None:
            log.warning("NRI: dropping a response on stream %d: no call waits for it", message.stream_id)
            return
        response = ttrpc_pb2.Response()
        if message.oversized:
            response.status.code = Code.RESOURCE_EXHAUSTED
            response.status.message = f"the runtime's response exceeds {wire.MAX_MESSAGE} bytes"
        else:
            try:
                response.ParseFromString(message.payload)
            except DecodeError as err:
                response.status.code = Code.INTERNAL
                response.status.message = f"the runtime's response is not a ttrpc Response: {err}"
        pending.response = response
        pending.done.set()
