"""The agent's hook socket puts tasks under SCHED_DEADLINE: only root (the runtime's hooks) may reach it."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from agent.enforce import Outcome
from agent.server import HookServer

NOBODY = 65534


class Answering:
    def __init__(self) -> None:
        self.calls = 0

    def handle(self, stage: str, raw_state: bytes, *, claim: str = "") -> Outcome:
        self.calls += 1
        return Outcome(True, f"{stage} seen")


def ask(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b"createRuntime\n{}")
        s.shutdown(socket.SHUT_WR)
        return s.recv(4096).decode()


def as_nobody_can_connect(path: Path) -> int:
    """0: connected; 1: refused for permission; 2: something else (in a child that became nobody)."""
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, report through the exit status
        code = 2
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            ask(path)
            code = 0
        except PermissionError:
            code = 1
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_an_unprivileged_user_cannot_reach_the_hook_socket() -> None:
    # pytest's tmp_path lies under a 0700 directory, which alone would keep nobody out: use one all may enter,
    # so that only the socket's own mode can.
    directory = Path(tempfile.mkdtemp(prefix="rtdra-hook-access-", dir="/tmp"))
    directory.chmod(0o755)
    path = directory / "hook.sock"
    enforcer = Answering()
    server = HookServer(path, enforcer)  # type: ignore[arg-type]
    server.start()
    try:
        assert ask(path).startswith("ok createRuntime")  # root (the runtime's hook) is answered
        assert as_nobody_can_connect(path) == 1
        assert enforcer.calls == 1
        path.chmod(0o666)  # the control: with a permissive mode the same user gets through
        assert as_nobody_can_connect(path) == 0
        assert enforcer.calls == 2
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
