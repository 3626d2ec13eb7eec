"""Per-task facts and nudges, read from ``/proc``: state, start time, last CPU; waiting for a sleep, settling on CPUs.

Split from ``rtdra.host`` (which measures what the node can give) because the
node agent's hot path - a hook answering for a container's tasks - needs only
these, not the capacity probing with its helper processes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


class TaskError(RuntimeError):
    """A task did not do what it was waited for."""


def _stat_fields(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` from field 3 (state) on, split (the name may hold spaces); ``[]`` if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rpartition(")")[2].split()


def task_state(pid: int) -> str:
    """The one-letter state of ``/proc/<pid>/stat`` (``R``, ``S``, ``D``, ``Z`` ...); ``""`` if gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else ""


def task_start_time(pid: int) -> int:
    """When the task started, in clock ticks since boot (``/proc/<pid>/stat`` field 22); 0 if gone.

    A thread id and this together name one task for the machine's uptime: ids are reused, start times are not.
    """
    fields = _stat_fields(pid)
    return int(fields[19]) if len(fields) > 19 else 0


def task_cpu(pid: int) -> int:
    """The CPU the task last ran on (``/proc/<pid>/stat`` field 39); -1 if gone."""
    fields = _stat_fields(pid)
    return int(fields[36]) if len(fields) > 36 else -1


def settle_on(tid: int, cpus: Iterable[int], timeout_s: float = 1.0) -> None:
    """Make a blocked task just moved into a cpuset of ``cpus`` actually get there.

    The kernel judges SCHED_DEADLINE admission (and the EPERM affinity rule)
    by the root domain of the CPU a task *last ran on*, and a sleeping task
    only migrates when it wakes. A stop/continue pair wakes it (system calls
    restart transparently; stop signals run no handler).
    """
    allowed = frozenset(cpus) | {-1}
    if task_cpu(tid) in allowed:
        return
    os.kill(tid, signal.SIGSTOP)
    end = time.monotonic() + timeout_s
    while task_state(tid) not in ("T", "t", "") and time.monotonic() < end:
        time.sleep(0.0005)
    os.kill(tid, signal.SIGCONT)
    while task_cpu(tid) not in allowed and time.monotonic() < end:
        time.sleep(0.0005)


def wait_blocked(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until ``pid`` sleeps: deadline accounting of a task that is still
    running while its parameters change drifts (see ``rtdra.host``).

    ``timeout_s`` only bounds a wait that should end at once: a just-started
    ``sleep`` needs its fork, exec and loader to run first. 2 s was too little
    on a busy 2-CPU node: the agent of a real node, started while kubelet and
    containerd were starting beside a test suite, gave up on its capacity
    probe's first helper ("did not go to sleep") and exited.
    """
    deadline = time.monotonic() + timeout_s
    while task_state(pid) not in ("S", "D", "T", "") and time.monotonic() < deadline:
        time.sleep(0.001)
    state = task_state(pid)
    if state not in ("S", "D", "T"):
        raise TaskError(f"task {pid} did not go to sleep within {timeout_s:g}s (state {state or 'gone'!r})")
