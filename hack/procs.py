"""Processes the test harness starts: spawn them so they die with us, and stop them for sure.

Every long-running program the harness runs (etcd, kube-apiserver, kubelet,
containerd, the RT-DRA components) is started through :func:`spawn`: its own
session (so a signal reaches its whole group), its output appended to a log
file, and - unless it is meant to outlive us (``make up``) - the kernel's
``PR_SET_PDEATHSIG`` so that a crashed or killed test run leaves nothing
behind. :func:`kill` stops one: SIGTERM, a grace period, then SIGKILL.

Only the standard library: the harness modules (``hack.cluster``,
``hack.node``, ``hack.stack`` ...) all build on this.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Where the harness caches what it builds (upstream programs, node images): ``RTDRA_CACHE``.
CACHE_ROOT = Path(os.environ.get("RTDRA_CACHE", Path.home() / ".cache" / "rt-dra"))

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the Python process that started us dies.

    Runs only ``prctl()`` between fork and exec (safe as a ``preexec_fn``).
    """
    with contextlib.suppress(OSError, AttributeError):  # not Linux: best effort only
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_matching(needle: str) -> list[int]:
    """Every live process whose command line contains ``needle`` (e.g. a work directory)."""
    pids = (int(e) for e in os.listdir("/proc") if e.isdigit())
    return [p for p in pids if p != os.getpid() and needle in pid_cmdline(p) and pid_alive(p)]


def kill(pid: int, proc: subprocess.Popen[bytes] | None = None, grace: float = 10.0) -> None:
    """SIGTERM, up to ``grace`` seconds, then SIGKILL; reaps ``proc`` when given.

    With ``proc``, "gone" means reaped: a killed multi-threaded program's leader is a zombie while its
    other threads are still exiting and holding its files - its listening socket among them. Taking
    the zombie for gone made a chaos test's kube-apiserver, SIGKILLed and started again at once, fail
    with EADDRINUSE on its own port (twice in full runs); waitpid returns only once every thread exited.
    """
    if proc is not None and proc.poll() is not None:
        return
    if proc is None and not pid_alive(pid):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not pid_alive(pid):
                return
            time.sleep(0.05)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def kill_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop ``proc`` (see :func:`kill`), then SIGKILL whatever is left in its process group."""
    kill(proc.pid, proc, grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    detach: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, output appended to ``log``.

    ``env`` is added to this process's environment. Unless ``detach``, the
    child gets SIGKILL when this Python process dies.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # Popen dup()s the fd into the child; ours closes here
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            close_fds=True,
            preexec_fn=None if detach else die_with_parent,  # noqa: PLW1509 - only prctl() before exec
        )


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (or a note that there is none)."""
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data[-lines:])


#: Where :func:`free_port` looks: below the kernel's ephemeral range (``ip_local_port_range``).
PORT_FLOOR = 10000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, outside the kernel's ephemeral range.

    A server restarted on its port (a chaos test's kube-apiserver, the extender) must find it free:
    a port from the ephemeral range (what ``bind(("", 0))`` gives) can meanwhile become the local
    end of any outgoing connection on the machine. (The EADDRINUSE the chaos test met had another
    cause, see :func:`kill`; this only keeps the ephemeral range out of the way.)
    """
    ceiling = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(PORT_FLOOR, ceiling) if ceiling > PORT_FLOOR else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError(f"no free TCP port on 127.0.0.1 between {PORT_FLOOR} and {ceiling}")


def run_build_script(script: Path, env: Mapping[str, str], *, quiet: bool, log_hint: str) -> Path:
    """Run a build script that prints its output directory last (progress on stderr); return that directory.

    Raises ``RuntimeError`` naming the script, its exit status and where its full log is.
    """
    try:
        proc = subprocess.run(
            ["bash", str(script)],
            check=False,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if quiet else None,
            text=True,
        )
    except OSError as err:
        raise RuntimeError(f"cannot run {script}: {err}") from err
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{script} failed with exit code {proc.returncode} (log: {log_hint})")
    return Path(proc.stdout.strip().splitlines()[-1])


def read_versions(path: Path) -> dict[str, str]:
    """A build's ``VERSIONS`` file (``name=value`` lines) as a dict; empty when there is none."""
    versions: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                versions[key] = value
    return versions
