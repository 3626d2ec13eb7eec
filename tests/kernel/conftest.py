"""Fixtures for tests that make real SCHED_DEADLINE reservations.

Every test here runs as root against this machine's kernel, so the fixtures
exist to leave the machine exactly as found: sleeping helper processes are
always killed (while still SCHED_DEADLINE - the kernel releases a dead task's
bandwidth at once, see ``rtdra.host``), the root domain's deadline accounting
is compared before and after where debugfs shows it, and the kernel tests of
concurrent pytest runs take turns (a file lock), since they share the CPUs.

Skips (not root, no SCHED_DEADLINE) become failures with RTDRA_REQUIRE_KERNEL=1.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtdra import host, sched, tasks

LOCK_FILE = (
    Path("/run/lock/rtdra-kernel-tests.lock") if Path("/run/lock").is_dir() else Path("/tmp/rtdra-kernel-tests.lock")
)


def _require() -> bool:
    return os.environ.get("RTDRA_REQUIRE_KERNEL", "") not in ("", "0", "false", "no")


def kernel_unavailable() -> str | None:
    """Why real-kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (CAP_SYS_NICE, cgroup writes)"
    if not sched.deadline_supported():
        return "the kernel has no sched_setattr/SCHED_DEADLINE"
    return None


@pytest.fixture(scope="session")
def kernel() -> None:
    reason = kernel_unavailable()
    if reason:
        if _require():
            pytest.fail(f"real-kernel test cannot run: {reason} (RTDRA_REQUIRE_KERNEL=1)", pytrace=False)
        pytest.skip(f"real-kernel test skipped: {reason} (set RTDRA_REQUIRE_KERNEL=1 to fail instead)")


@pytest.fixture
def kernel_lock(kernel: None) -> Iterator[None]:
    """One kernel test at a time across pytest processes on this machine."""
    with open(LOCK_FILE, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def dl_clean(kernel_lock: None) -> Iterator[int | None]:
    """The root domain's ``total_bw`` before the test (None without debugfs); checks it is back after."""
    before = host.root_domain_total_bw()
    yield before
    if before is None:
        return
    after = host.root_domain_total_bw()
    for _ in range(50):  # a dying task's bandwidth goes when its last switch completes
        if after == before:
            break
        time.sleep(0.01)
        after = host.root_domain_total_bw()
    if after != before:
        host.rebuild_root_domains()  # repair the machine, then report
        pytest.fail(f"deadline bandwidth leaked in the kernel: total_bw {before} -> {after} (repaired)")


class Sleepers:
    """Sleeping child processes for tests; all killed at the end, whatever happens."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, cpus: frozenset[int] | None = None) -> int:
        proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, close_fds=True)
        self.procs[proc.pid] = proc
        if cpus is not None:
            sched.set_affinity(proc.pid, cpus)
        tasks.wait_blocked(proc.pid)
        return proc.pid

    def kill(self, pid: int) -> None:
        proc = self.procs.pop(pid)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for pid in list(self.procs):
            self.kill(pid)


@pytest.fixture
def sleepers(dl_clean: int | None) -> Iterator[Sleepers]:
    """Killed before ``dl_clean`` checks the kernel's accounting."""
    pool = Sleepers()
    try:
        yield pool
    finally:
        pool.close()
