"""The bytes on an NRI socket: the connection multiplexer and ttrpc's message frames.

One unix stream carries two logical connections (NRI ``pkg/net/multiplex``, v0.12.3): every
chunk is sent as a frame of an 8-byte header - connection id (u32, big-endian) and length (u32,
big-endian) - and the chunk. Connection 1 (``PluginServiceConn``) carries the runtime's calls to
the plugin, connection 2 (``RuntimeServiceConn``) the plugin's calls to the runtime; id 0 is
reserved. A chunk is just a piece of that connection's byte stream: a ttrpc message may span
chunks, or a chunk hold several messages, so each connection is reassembled as a stream
(:class:`MessageReader`). We send at most :data:`MAX_CHUNK` bytes a chunk: upstream's reader
fails a read with ENOMEM when a chunk is larger than the buffer it reads into, and its ttrpc
channel reads through a 4096-byte ``bufio.Reader``.

On each connection, ttrpc (``channel.go``, v1.2.7) frames messages with a 10-byte header -
length (u32), stream id (u32), type (u8: 1 request, 2 response, 3 data), flags (u8) - all
big-endian; the length excludes the header and is at most 4 MiB. Clients use odd stream ids,
incrementing. A request's payload is a ``ttrpc.Request`` protobuf, a response's a
``ttrpc.Response`` (a ``google.rpc.Status`` and the reply's bytes).

Nothing here does I/O: the parsers are fed bytes and hand back frames, so every rule is testable
byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

MUX_HEADER: Final = struct.Struct(">II")
#: The runtime's calls to the plugin (the plugin is the ttrpc server of ``nri.pkg.api.v1alpha1.Plugin``).
PLUGIN_SERVICE_CONN: Final = 1
#: The plugin's calls to the runtime (``nri.pkg.api.v1alpha1.Runtime``: RegisterPlugin, UpdateContainers).
RUNTIME_SERVICE_CONN: Final = 2
#: What we put in one mux frame (see the module docstring).
MAX_CHUNK: Final = 4096

TTRPC_HEADER: Final = struct.Struct(">IIBB")
#: ttrpc's messageLengthMax.
MAX_MESSAGE: Final = 4 << 20
#: Upstream's largest mux frame (a whole ttrpc message); anything longer is not a peer we understand.
MAX_MUX_FRAME: Final = TTRPC_HEADER.size + MAX_MESSAGE

PLUGIN_SERVICE: Final = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE: Final = "nri.pkg.api.v1alpha1.Runtime"


class MessageType(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Code(IntEnum):
    """The gRPC status codes ttrpc uses (``google.golang.org/grpc/codes``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class ProtocolError(ValueError):
    """The peer sent bytes that cannot be framed; the connection cannot continue."""


def mux_frames(conn_id: int, data: bytes, max_chunk: int = MAX_CHUNK) -> bytes:
    """``data`` sent on connection ``conn_id``: one or more mux frames, ready to write."""
    if not data:
        return b""
    out = bytearray()
    for start in range(0, len(data), max_chunk):
        chunk = data[start : start + max_chunk]
        out += MUX_HEADER.pack(conn_id, len(chunk))
        out += chunk
    return bytes(out)


def ttrpc_frame(stream_id: int, kind: MessageType, payload: bytes, flags: int = 0) -> bytes:
    """One ttrpc message: header and payload."""
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"ttrpc message of {len(payload)} bytes exceeds the maximum of {MAX_MESSAGE}")
    return TTRPC_HEADER.pack(len(payload), stream_id, kind, flags) + payload


class MuxReader:
    """Splits the trunk's byte stream into ``(conn_id, chunk)``; feed it what ``recv`` returned."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buf += data
        while len(self._buf) >= MUX_HEADER.size:
            conn_id, length = MUX_HEADER.unpack_from(self._buf)
            if length > MAX_MUX_FRAME:
                raise ProtocolError(f"mux frame of {length} bytes on connection {conn_id} (max {MAX_MUX_FRAME})")
            end = MUX_HEADER.size + length
            if len(self._buf) < end:
                return
            chunk = bytes(self._buf[MUX_HEADER.size : end])
            del self._buf[:end]
            yield conn_id, chunk


@dataclass(frozen=True, slots=True)
class Message:
    """One ttrpc message. ``oversized``: its payload (longer than allowed) was skipped, not kept."""

    stream_id: int
    kind: int
    flags: int
    payload: bytes
    oversized: bool = False


class MessageReader:
    """Reassembles one mux connection's byte stream into ttrpc messages.

    An oversized message is skipped and reported (``oversized=True``), as ttrpc's own channel
    discards it and answers RESOURCE_EXHAUSTED on its stream: the stream stays in step.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized payload still to drop

    def feed(self, data: bytes) -> Iterator[Message]:
        self._buf += data
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buf))
                del self._buf[:dropped]
                self._skip -= dropped
                if self._skip:
                    return
            if len(self._buf) < TTRPC_HEADER.size:
                return
            length, stream_id, kind, flags = TTRPC_HEADER.unpack_from(self._buf)
            if length > MAX_MESSAGE:
                del self._buf[: TTRPC_HEADER.size]
                self._skip = length
                yield Message(stream_id, kind, flags, b"", oversized=True)
                continue
            end = TTRPC_HEADER.size + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[TTRPC_HEADER.size : end])
            del self._buf[:end]
            yield Message(stream_id, kind, flags, payload)
