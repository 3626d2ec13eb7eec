"""NRI's bytes, pinned down: the connection multiplexer, ttrpc's frames, the protobuf messages.

The expected bytes are written out by hand from upstream's definitions (NRI v0.12.3
``pkg/net/multiplex/mux.go``, ttrpc v1.2.7 ``channel.go`` and ``request.proto``) - and the
RegisterPlugin frame is the one upstream's own Go stub sends (captured from
``github.com/containerd/nri/pkg/stub`` v0.12.3, see ``GO_STUB_REGISTER``).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent._generated.nri import api_pb2, ttrpc_pb2
from agent.nri import wire
from agent.nri.stub import event_mask


def test_mux_frame_is_conn_id_and_length_big_endian_then_the_bytes() -> None:
    assert wire.mux_frames(2, b"abc") == bytes.fromhex("0000000200000003") + b"abc"
    assert wire.mux_frames(1, b"") == b""


def test_mux_splits_long_writes_into_chunks_upstreams_reader_can_take() -> None:
    data = bytes(range(256)) * 20  # 5120 bytes
    framed = wire.mux_frames(1, data)
    assert framed[:8] == bytes.fromhex("0000000100001000")
    assert framed[8 : 8 + 4096] == data[:4096]
    assert framed[8 + 4096 : 16 + 4096] == bytes.fromhex("0000000100000400")
    assert framed[16 + 4096 :] == data[4096:]


def test_mux_reader_reassembles_frames_fed_a_byte_at_a_time() -> None:
    stream = wire.mux_frames(1, b"hello") + wire.mux_frames(2, b"world!")
    reader = wire.MuxReader()
    got = [frame for i in range(len(stream)) for frame in reader.feed(stream[i : i + 1])]
    assert got == [(1, b"hello"), (2, b"world!")]


def test_mux_reader_refuses_a_frame_longer_than_any_upstream_sends() -> None:
    reader = wire.MuxReader()
    with pytest.raises(wire.ProtocolError):
        list(reader.feed(wire.MUX_HEADER.pack(1, wire.MAX_MUX_FRAME + 1)))


def test_ttrpc_frame_is_length_stream_type_flags_then_payload() -> None:
    assert wire.ttrpc_frame(1, wire.MessageType.REQUEST, b"xy") == bytes.fromhex("00000002000000010100") + b"xy"
    assert wire.ttrpc_frame(7, wire.MessageType.RESPONSE, b"") == bytes.fromhex("00000000000000070200")
    with pytest.raises(ValueError):
        wire.ttrpc_frame(1, wire.MessageType.REQUEST, bytes(wire.MAX_MESSAGE + 1))


def test_message_reader_reassembles_messages_split_across_mux_chunks() -> None:
    stream = wire.ttrpc_frame(1, wire.MessageType.REQUEST, b"a" * 5000) + wire.ttrpc_frame(
        3, wire.MessageType.REQUEST, b"b"
    )
    reader = wire.MessageReader()
    got = [m for start in range(0, len(stream), 4096) for m in reader.feed(stream[start : start + 4096])]
    assert [(m.stream_id, m.kind, m.payload) for m in got] == [(1, 1, b"a" * 5000), (3, 1, b"b")]


def test_oversized_message_is_skipped_and_reported_and_the_stream_stays_in_step() -> None:
    too_long = wire.MAX_MESSAGE + 10
    stream = (
        wire.TTRPC_HEADER.pack(too_long, 5, 1, 0)
        + bytes(too_long)
        + wire.ttrpc_frame(7, wire.MessageType.REQUEST, b"ok")
    )
    reader = wire.MessageReader()
    got = [m for start in range(0, len(stream), 65536) for m in reader.feed(stream[start : start + 65536])]
    assert [(m.stream_id, m.oversized, m.payload) for m in got] == [(5, True, b""), (7, False, b"ok")]


@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=9000)), max_size=6), st.integers(1, 5000))
def test_mux_and_ttrpc_round_trip_whatever_the_chunking(messages: list[tuple[int, bytes]], cut: int) -> None:
    stream = b"".join(
        wire.mux_frames(conn, wire.ttrpc_frame(2 * i + 1, wire.MessageType.REQUEST, body))
        for i, (conn, body) in enumerate(messages)
    )
    mux, readers = wire.MuxReader(), {1: wire.MessageReader(), 2: wire.MessageReader()}
    got = [
        (conn, m.payload)
        for start in range(0, len(stream), cut)
        for conn, chunk in mux.feed(stream[start : start + cut])
        for m in readers[conn].feed(chunk)
    ]
    assert got == messages


# RegisterPluginRequest{plugin_name: "rtdra", plugin_idx: "10", NRI_version: "v0.12.3"}
REGISTER = bytes.fromhex("0a057274647261120231301a0776302e31322e33")


def test_register_plugin_request_bytes() -> None:
    message = api_pb2.RegisterPluginRequest(plugin_name="rtdra", plugin_idx="10", NRI_version="v0.12.3")
    assert message.SerializeToString() == REGISTER
    assert api_pb2.RegisterPluginRequest.FromString(REGISTER) == message


def test_ttrpc_request_bytes_follow_request_proto() -> None:
    request = ttrpc_pb2.Request(
        service="nri.pkg.api.v1alpha1.Runtime", method="RegisterPlugin", payload=REGISTER, timeout_nano=5_000_000_000
    )
    expected = (
        bytes.fromhex("0a1c") + b"nri.pkg.api.v1alpha1.Runtime"
        + bytes.fromhex("120e") + b"RegisterPlugin"
        + bytes.fromhex("1a14") + REGISTER
        + bytes.fromhex("20" "80e497d012")  # timeout_nano = 5e9 as a varint
    )  # fmt: skip
    assert request.SerializeToString() == expected


# What upstream's Go stub (nri v0.12.3 pkg/stub, ttrpc v1.2.7) wrote on the socket for
# stub.New(p, WithPluginName("rtdra"), WithPluginIdx("10")).Start(): one mux frame on connection 2
# holding one ttrpc request on stream 1 (captured from the Go program, not written by hand).
GO_STUB_REGISTER = bytes.fromhex(
    "00000002"
    "00000054"  # mux: connection 2 (RuntimeServiceConn), 84 bytes
    "0000004a"
    "00000001"
    "01"
    "00"  # ttrpc: 74 bytes, stream 1, request, no flags
    "0a1c6e72692e706b672e6170692e7631616c706861312e52756e74696d65"
    "120e5265676973746572506c7567696e"
    "1a140a057274647261120231301a0776302e31322e33"
    "2083b5fdcf12"  # timeout_nano: what was left of the 5 s registration timeout
)


def test_our_frames_are_byte_for_byte_those_of_upstreams_go_stub() -> None:
    ((conn, chunk),) = list(wire.MuxReader().feed(GO_STUB_REGISTER))
    (message,) = list(wire.MessageReader().feed(chunk))
    request = ttrpc_pb2.Request.FromString(message.payload)
    assert (conn, message.stream_id, message.kind) == (wire.RUNTIME_SERVICE_CONN, 1, wire.MessageType.REQUEST)
    assert (request.service, request.method, request.payload) == (wire.RUNTIME_SERVICE, "RegisterPlugin", REGISTER)
    ours = ttrpc_pb2.Request(
        service=wire.RUNTIME_SERVICE, method="RegisterPlugin", payload=REGISTER, timeout_nano=request.timeout_nano
    )
    assert (
        wire.mux_frames(2, wire.ttrpc_frame(1, wire.MessageType.REQUEST, ours.SerializeToString())) == GO_STUB_REGISTER
    )


def test_ttrpc_response_carries_a_full_google_rpc_status() -> None:
    response = ttrpc_pb2.Response(payload=b"")
    response.status.code = wire.Code.UNIMPLEMENTED
    response.status.message = "method Foo"
    assert response.SerializeToString() == bytes.fromhex("0a0e080c120a") + b"method Foo"


def test_event_mask_sets_bit_event_minus_one() -> None:
    # EventMask.Set in pkg/api/event.go: 1 << (e - 1); CreateContainer is 4, RemoveContainer 11.
    assert event_mask([api_pb2.CREATE_CONTAINER]) == 0b1000
    assert event_mask([api_pb2.RUN_POD_SANDBOX, api_pb2.REMOVE_CONTAINER]) == 0b100_0000_0001


def test_nri_enums_are_nri_s_not_the_kernel_s() -> None:
    # NRI numbers SCHED_DEADLINE 7 (the kernel: 6) and flags by position - never pass one for the other.
    assert api_pb2.SCHED_DEADLINE == 7
    assert api_pb2.SCHED_FLAG_RESET_ON_FORK == 0


def test_the_generated_messages_are_the_version_the_agent_announces() -> None:
    from pathlib import Path

    from agent.nri import stub

    script = (Path(__file__).resolve().parents[2] / "hack" / "proto" / "gen_nri.sh").read_text()
    assert f"NRI_VERSION={stub.NRI_VERSION}\n" in script
    assert api_pb2.DESCRIPTOR.package == "nri.pkg.api.v1alpha1"
    assert api_pb2.DESCRIPTOR.name == "agent/_generated/nri/api.proto"  # unique in protobuf's descriptor pool
    plugin = api_pb2.DESCRIPTOR.services_by_name["Plugin"]
    assert {"Configure", "Synchronize", "StartContainer", "PostStartContainer", "Shutdown"} <= set(
        plugin.methods_by_name
    )
