"""Sleeping processes that stand for containers in the real-kernel tests; all killed at the end.

Shared by ``test_kernel_agent`` (which also puts them in a cpuset cgroup) and
``test_kernel_nri``. They sleep, so a real reservation on them costs no CPU.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

from rtdra import sched, tasks

TWO_THREADS = "import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()\ntime.sleep(600)\n"


class SleepingProcesses:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def placed(self, pid: int) -> None:
        """Called with each new process before it is waited for (e.g. to move it into a cgroup)."""

    def start(self, threads: int = 1) -> int:
        """A process with ``threads`` threads, all blocked once this returns."""
        argv = ["sleep", "600"] if threads == 1 else [sys.executable, "-c", TWO_THREADS]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        self.placed(proc.pid)
        deadline = time.monotonic() + 5
        while len(sched.threads_of(proc.pid)) < threads and time.monotonic() < deadline:
            time.sleep(0.01)
        for tid in sched.threads_of(proc.pid):
            tasks.wait_blocked(tid)
        return proc.pid

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()
