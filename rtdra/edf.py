"""Exact EDF schedulability on one CPU: the processor-demand test (QPA).

When every reservation on a CPU has ``deadline == period``, EDF meets all
deadlines exactly when the total bandwidth fits (the kernel's own test). With
constrained deadlines (``deadline < period``) that is no longer enough; the
exact condition is on the demand bound function

    dbf(t) = sum over tasks with D_i <= t of (floor((t - D_i) / T_i) + 1) * C_i

which must stay within the time the CPU supplies, ``speed * t``, for all t.
Here ``speed`` is the share of the CPU the kernel leaves to deadline tasks
(its capacity in the kernel's fixed point, see ``rtdra.bandwidth``).
QPA (Zhang & Burns, "Schedulability analysis for real-time systems with EDF
scheduling", IEEE TC 2009) walks the few checkpoints that matter backwards
from an upper bound L instead of every deadline. Arithmetic is exact
(``fractions.Fraction``); nothing is rounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Final, Protocol

from rtdra.bandwidth import BW_UNIT

#: Bound on QPA steps; past it the answer is a conservative "does not fit".
MAX_STEPS: Final = 200_000


class Timed(Protocol):
    """A sporadic task: ``runtime_ns`` every ``period_ns`` within ``deadline_ns`` - the three SCHED_DEADLINE
    parameters of a ledger slot, a reservation or a ``sched_attr`` (the test itself is unit-free)."""

    @property
    def runtime_ns(self) -> int: ...

    @property
    def deadline_ns(self) -> int: ...

    @property
    def period_ns(self) -> int: ...


def demand(tasks: Sequence[Timed], t: Fraction | int) -> Fraction:
    """The processor demand of synchronous releases in ``[0, t]``."""
    total = Fraction(0)
    for task in tasks:
        if t >= task.deadline_ns:
            total += (math.floor(Fraction(t - task.deadline_ns, task.period_ns)) + 1) * task.runtime_ns
    return total


def _last_deadline_before(tasks: Sequence[Timed], t: Fraction, *, inclusive: bool = False) -> Fraction | None:
    """The latest absolute deadline of a synchronous release before ``t`` (or at it)."""
    best: Fraction | None = None
    for task in tasks:
        if task.deadline_ns < t or (inclusive and task.deadline_ns == t):
            offset = Fraction(t - task.deadline_ns, task.period_ns)
            k = math.floor(offset) if inclusive else math.ceil(offset) - 1
            d = Fraction(task.deadline_ns + k * task.period_ns)
            if best is None or d > best:
                best = d
    return best


def _busy_period(tasks: Sequence[Timed], speed: Fraction) -> Fraction:
    w = sum((Fraction(t.runtime_ns) for t in tasks), Fraction(0)) / speed
    for _ in range(MAX_STEPS):
        nxt = sum((math.ceil(w / t.period_ns) * Fraction(t.runtime_ns) for t in tasks), Fraction(0)) / speed
        if nxt == w:
            return w
        w = nxt
    return w


def edf_schedulable(tasks: Sequence[Timed], capacity: int = BW_UNIT) -> bool:
    """Whether EDF meets every deadline of ``tasks`` on a CPU of ``capacity`` (fixed point)."""
    if not tasks:
        return True
    if capacity <= 0:
        return False
    speed = Fraction(capacity, BW_UNIT)
    utilisation = sum((Fraction(t.runtime_ns, t.period_ns) for t in tasks), Fraction(0))
    if utilisation > speed:
        return False
    if all(t.deadline_ns >= t.period_ns for t in tasks):
        return True  # implicit deadlines: the utilisation bound is exact
    d_max = max(t.deadline_ns for t in tasks)
    bound = _busy_period(tasks, speed)
    if utilisation < speed:
        slack = sum((Fraction((t.period_ns - t.deadline_ns) * t.runtime_ns, t.period_ns) for t in tasks), Fraction(0))
        bound = min(bound, max(Fraction(d_max), slack / (speed - utilisation)))
    d_min = min(t.deadline_ns for t in tasks)
    t = _last_deadline_before(tasks, bound, inclusive=True)
    if t is None:
        return True
    for _ in range(MAX_STEPS):
        h = demand(tasks, t) / speed
        if h > t:
            return False
        if h <= d_min:
            return True
        if h < t:
            t = h
        else:
            previous = _last_deadline_before(tasks, t)
            if previous is None:
                return True
            t = previous
    return False
