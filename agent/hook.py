#!/usr/bin/env python3
"""rtdra-hook: the OCI hook. Hands the container's state to the node agent.

The container runtime runs this on the *host*, in its own mount namespace,
under the host's Python - not the agent image's. So this file is
self-contained and portable: the agent copies it verbatim into its hook
directory (``agent.cdi.install_hook``), and it must run under any CPython 3.6
or newer. Hence: no ``from __future__ import annotations`` (3.7+), no
walrus (3.8+), and annotations the interpreter never evaluates (quoted:
``list[str]`` at definition time is a TypeError before 3.9).
``tests/unit/test_agent_units.py`` checks all of that, and runs it under
every older CPython it finds.

Kept deliberately tiny, because its start-up *is* the hook's latency: it
imports nothing but ``sys`` and ``_socket`` (``os`` alone costs ~1 ms,
``socket`` and ``json`` ~10 ms each here). The CDI spec has it loaded by
the import system's source loader (``python3 -S -I -c "...SourceFileLoader
..."``, see ``agent.cdi``) rather than run as a script, so the host's
interpreter caches its bytecode under ``__pycache__`` for its own version
and does not compile it on every container start. The agent does the work and answers ``ok ...`` or
``error ...``; on error (or with no agent) the hook prints a one-line reason
and exits 1, and the runtime does not start the container - unless
``--fail-open``.

With ``--claim KEY`` (the CDI device of a prepared DRA claim carries it: ``<claim uid>/<request>``)
the first line it sends is ``<stage> <KEY>``: the agent takes the container's reservation from that
claim instead of from the NodeAllocationState.

Usage: rtdra-hook --socket PATH [--stage createRuntime|poststop] [--claim KEY] [--fail-open] < state.json
"""
# ruff: noqa: UP037 - quoted annotations on purpose: they must not be evaluated by a host Python < 3.9

import _socket
import sys

DEFAULT_SOCKET = "/var/run/rt-dra/agent.sock"
TIMEOUT_S = 10.0
USAGE = "usage: rtdra-hook --socket PATH [--stage STAGE] [--claim KEY] [--fail-open] < state.json"


def ask_agent(socket_path: str, stage: str, state: bytes) -> str:
    """Send ``<stage>\\n<state>`` and return the agent's one-line answer (an ``error ...`` one if unreachable)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    chunks: "list[bytes]" = []
    try:
        sock.settimeout(TIMEOUT_S)
        sock.connect(socket_path)
        sock.sendall(stage.encode() + b"\n" + state)
        sock.shutdown(_socket.SHUT_WR)
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as err:
        return f"error rtdra-agent unreachable at {socket_path}: {err.strerror or err}"
    finally:
        sock.close()
    reply = b"".join(chunks).decode("utf-8", "replace").strip()
    return reply or "error rtdra-agent closed the connection without an answer"


def run(argv: "list[str]", state: bytes) -> "tuple[int, str]":
    """The exit status and the line for stderr ("" for none)."""
    socket_path, stage, claim, fail_open = DEFAULT_SOCKET, "createRuntime", "", False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--socket" and args:
            socket_path = args.pop(0)
        elif arg == "--stage" and args:
            stage = args.pop(0)
        elif arg == "--claim" and args:
            claim = args.pop(0)
        elif arg == "--fail-open":
            fail_open = True
        else:
            return 2, f"rtdra-hook: {USAGE}"
    line = stage + " " + claim if claim else stage
    status, _, message = ask_agent(socket_path, line, state).partition(" ")
    if status == "ok":
        return 0, ""
    if fail_open or stage == "poststop":
        return 0, f"rtdra-hook: warning: {message} (continuing)"
    return 1, f"rtdra-hook: {message}"


def main() -> None:
    code, line = run(sys.argv[1:], sys.stdin.buffer.read())
    if line:
        sys.stderr.write(line + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
