"""The harness's process helpers."""

from __future__ import annotations

import socket

from hack.procs import PORT_FLOOR, _ephemeral_low, free_port


def test_free_ports_are_outside_the_ephemeral_range_so_a_restarted_server_finds_its_port() -> None:
    ports = {free_port() for _ in range(50)}
    assert all(PORT_FLOOR <= p < _ephemeral_low() for p in ports), sorted(ports)
    for port in list(ports)[:5]:  # free indeed
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
