"""Why a job missed its deadline: the kernel's own record of the worker's wake-ups and context switches.

``bench/bench_rt.py`` traces each scenario's worker threads with two scheduler
tracepoints, ``sched_wakeup`` and ``sched_switch``, in a tracefs instance of
its own (``instances/rtdra-bench-rt``: the global trace buffer and whatever
else traces the machine are left alone), on the ``mono`` trace clock - the
CLOCK_MONOTONIC rt-app logs in. ``set_event_pid`` keeps only events naming a
worker (a switch is kept when the worker goes out or comes in). tracefs is
mounted for the run if it was not, and everything is undone afterwards.

:func:`explain` then gives every missed job one cause, from what the kernel
recorded between its release and its completion:

- ``late timer``: the worker's timer woke it more than :data:`LATE_US` after
  the release. Nothing in RT-DRA or the kernel's deadline scheduler acts
  before the wake-up: on a VM this is the host not running the vCPU (or a long
  stretch with interrupts off in the guest).
- ``waited for a CPU``: woken on time, it first ran more than :data:`LATE_US`
  later, behind the task named (a kernel without full preemption runs the
  task in the kernel to its next preemption point).
- ``deadline tasks first``: switched out runnable for another SCHED_DEADLINE
  task (``next_prio=-1``): EDF chose the other task. Among admitted tasks that
  is fine unless the job then misses - which, with the capacity model right,
  it should not: this cause is the one that would point at RT-DRA's admission.
- ``throttled``: switched out runnable and run again only at its next period
  (or the CPU went idle meanwhile): the kernel charged it its whole runtime
  for this period - the job needed more CPU than its runtime.
- ``preempted`` (plain workers only): switched out runnable for more than
  :data:`LATE_US` (CFS shares the CPU; nothing is reserved for it).
- ``backlog``: it never slept before this job (the job before it ended late).
- ``not traced``: no event in the window (the trace lost it or had not begun).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

TRACEFS = Path("/sys/kernel/tracing")
INSTANCE = "rtdra-bench-rt"
EVENTS = ("sched/sched_wakeup", "sched/sched_switch")
#: A wake-up or a first run this much after the release is late (µs).
LATE_US = 1000

_LINE = re.compile(
    r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s+(?P<rest>.*)$"
)
_FIELD = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True, slots=True)
class Event:
    """One traced event; times in CLOCK_MONOTONIC µs."""

    ts_us: int
    cpu: int
    kind: str  # "wakeup" or "switch"
    pid: int = 0  # wakeup: the task woken
    prev_pid: int = 0
    prev_comm: str = ""
    prev_state: str = ""
    next_pid: int = 0
    next_comm: str = ""
    next_prio: int = 0


def parse(text: str) -> list[Event]:
    """The ``sched_wakeup`` and ``sched_switch`` lines of a tracefs ``trace`` file (other lines are skipped)."""
    events = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None or m["event"] not in ("sched_wakeup", "sched_switch"):
            continue
        seconds, _, fraction = m["ts"].partition(".")
        ts_us = int(seconds) * 1_000_000 + int(fraction.ljust(6, "0")[:6])
        rest = m["rest"]
        if m["event"] == "sched_wakeup":
            fields = dict(_FIELD.findall(rest))
            events.append(Event(ts_us, int(m["cpu"]), "wakeup", pid=int(fields.get("pid", 0))))
            continue
        prev, _, nxt = rest.partition(" ==> ")
        p, n = dict(_FIELD.findall(prev)), dict(_FIELD.findall(nxt))
        events.append(
            Event(
                ts_us,
                int(m["cpu"]),
                "switch",
                prev_pid=int(p.get("prev_pid", 0)),
                prev_comm=p.get("prev_comm", ""),
                prev_state=p.get("prev_state", ""),
                next_pid=int(n.get("next_pid", 0)),
                next_comm=n.get("next_comm", ""),
                next_prio=int(n.get("next_prio", 0)),
            )
        )
    return events


class MissedJob(Protocol):
    """What :func:`explain` needs of a job (``bench_rt.Job``)."""

    @property
    def release_us(self) -> int: ...

    @property
    def completion_us(self) -> int: ...


def explain(job: MissedJob, tid: int, period_us: int, events: Sequence[Event], *, deadline_task: bool = True) -> str:
    """The cause of one missed job of worker ``tid`` (see the module's docstring), with its figures.

    For a plain (``SCHED_OTHER``) worker a runnable switch-out is ``preempted``: nothing throttles it.
    """
    start, end = job.release_us - period_us // 2, job.completion_us + 100
    mine = [e for e in events if start <= e.ts_us <= end and tid in (e.pid, e.prev_pid, e.next_pid)]
    if not mine:
        return "not traced"
    wake = next((e for e in mine if e.kind == "wakeup" and e.pid == tid and e.ts_us >= job.release_us - 50), None)
    if wake is None:
        return "backlog"
    if wake.ts_us - job.release_us > LATE_US:
        return f"late timer ({(wake.ts_us - job.release_us) / 1000:.1f} ms)"
    runs = [e for e in mine if e.kind == "switch" and e.next_pid == tid and e.ts_us >= wake.ts_us]
    if not runs:
        return "not traced"
    first = runs[0]
    if first.ts_us - wake.ts_us > LATE_US:
        return f"waited for a CPU ({(first.ts_us - wake.ts_us) / 1000:.1f} ms, behind {first.prev_comm})"
    for out in (e for e in mine if e.kind == "switch" and e.prev_pid == tid and e.ts_us >= first.ts_us):
        if not out.prev_state.startswith("R"):
            continue  # it slept or blocked: not what made it late
        back = next((e for e in runs if e.ts_us > out.ts_us), None)
        away_ms = ((back.ts_us if back else job.completion_us) - out.ts_us) / 1000
        if not deadline_task:
            if away_ms * 1000 > LATE_US:
                return f"preempted ({out.next_comm}, {away_ms:.1f} ms)"
            continue
        if out.next_prio == -1 and out.next_pid != 0:
            return f"deadline tasks first ({out.next_comm}, {away_ms:.1f} ms)"
        if out.next_pid == 0 or (back is not None and back.ts_us >= job.release_us + period_us - 100):
            return f"throttled ({away_ms:.1f} ms off the CPU)"
    return "other"


def causes(explained: Iterable[str]) -> Counter[str]:
    """Counts by cause (the words before the figures)."""
    return Counter(text.split(" (")[0] for text in explained)


class TraceUnavailable(RuntimeError):
    """tracefs cannot be used here (not root, no tracefs, no sched events)."""


@contextlib.contextmanager
def traced(pids: Iterable[int], root: Path = TRACEFS) -> Iterator[Path]:
    """Trace ``sched_wakeup``/``sched_switch`` of ``pids`` while the block runs; yields the ``trace`` file.

    Read the file before the block ends: the instance (and a mount made here) is removed on the way out.
    """
    mounted = False
    if not (root / "instances").is_dir():
        result = subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(root)], check=False, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise TraceUnavailable(f"cannot mount tracefs on {root}: {result.stderr.strip()}")
        mounted = True
    instance = root / "instances" / INSTANCE
    created = False
    try:
        try:
            if instance.exists():
                instance.rmdir()  # left by a run that was killed
            instance.mkdir()
            created = True
            (instance / "trace_clock").write_text("mono")
            (instance / "buffer_size_kb").write_text("8192")
            (instance / "set_event_pid").write_text(" ".join(str(p) for p in pids))
            for event in EVENTS:
                (instance / "events" / event / "enable").write_text("1")
            (instance / "tracing_on").write_text("1")
        except OSError as err:
            raise TraceUnavailable(f"tracing with {instance}: {err}") from None
        yield instance / "trace"
    finally:
        if created:
            with contextlib.suppress(OSError):
                (instance / "tracing_on").write_text("0")
            for event in EVENTS:
                with contextlib.suppress(OSError):
                    (instance / "events" / event / "enable").write_text("0")
            with contextlib.suppress(OSError):
                instance.rmdir()
        if mounted:
            subprocess.run(["umount", str(root)], check=False)
