"""The agent's unix socket: the hook hands over the OCI state, the agent acts.

Protocol (one connection per hook call): the hook sends ``<stage>[ <claim>]\\n<OCI
state JSON>`` (``<claim>``: a DRA claim request's key, see ``agent.hook``) and
shuts down its write side; the agent answers one line,
``ok <message>`` or ``error <message>``, and closes. Keeping the work in the
long-running agent keeps the hook tiny (no imports beyond ``_socket``), which is
what makes hook-to-reservation fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socketserver
import threading
from pathlib import Path

from agent.enforce import Enforcer

log = logging.getLogger(__name__)
MAX_STATE_BYTES = 1 << 20


class _Handler(socketserver.BaseRequestHandler):
    server: HookServer

    def handle(self) -> None:
        chunks: list[bytes] = []
        size = 0
        while size < MAX_STATE_BYTES:
            chunk = self.request.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        first, _, state = b"".join(chunks).partition(b"\n")
        stage, _, claim = first.decode(errors="replace").strip().partition(" ")
        try:
            outcome = self.server.enforcer.handle(stage or "createRuntime", state, claim=claim.strip())
            line = f"{'ok' if outcome.ok else 'error'} {outcome.message}"
        except Exception as err:  # never leave the hook without an answer
            log.exception("hook request failed")
            line = f"error rtdra-agent: {err}"
        self.request.sendall(line.replace("\n", " ").encode() + b"\n")


class HookServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, enforcer: Enforcer) -> None:
        self.enforcer = enforcer
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        super().__init__(str(path), _Handler)
        os.chmod(path, 0o600)
        self.path = path

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="hook-server", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
