"""The harness's process helpers."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hack.procs import PORT_FLOOR, _ephemeral_low, free_port  # noqa: E402


def test_free_ports_are_outside_the_ephemeral_range_so_a_restarted_server_finds_its_port() -> None:
    ports = {free_port() for _ in range(50)}
    assert all(PORT_FLOOR <= p < _ephemeral_low() for p in ports), sorted(ports)
    for port in list(ports)[:5]:  # free indeed
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
