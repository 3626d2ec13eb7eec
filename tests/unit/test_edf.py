"""The exact EDF demand test agrees with brute force."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from rtdra.bandwidth import BW_UNIT
from rtdra.edf import demand, edf_schedulable

PERIODS = (2, 3, 4, 6, 8, 12)


class Task(NamedTuple):
    """The three parameters the test reads (its arithmetic is unit-free: small numbers keep brute force short)."""

    runtime_ns: int
    deadline_ns: int
    period_ns: int


def simulate_edf(tasks: list[Task]) -> bool:
    """Unit-step preemptive EDF of synchronous periodic releases over [0, H + D_max)."""
    hyper = math.lcm(*(t.period_ns for t in tasks))
    horizon = hyper + max(t.deadline_ns for t in tasks)
    jobs: list[list[int]] = []  # [absolute deadline, remaining]
    for now in range(horizon):
        jobs += [[now + t.deadline_ns, t.runtime_ns] for t in tasks if now % t.period_ns == 0]
        ready = [j for j in jobs if j[1] > 0]
        if ready:
            min(ready, key=lambda j: j[0])[1] -= 1
        if any(j[0] <= now + 1 and j[1] > 0 for j in jobs):
            return False
        jobs = [j for j in jobs if j[1] > 0]
    return True


tasks_strategy = st.lists(
    st.sampled_from(PERIODS).flatmap(
        lambda p: st.integers(1, p).flatmap(lambda c: st.integers(c, p).map(lambda d: Task(c, d, p)))
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=400, deadline=None)
@given(tasks_strategy)
def test_demand_test_agrees_with_brute_force_edf(tasks: list[Task]) -> None:
    assert edf_schedulable(tasks) == simulate_edf(tasks)


@settings(max_examples=200, deadline=None)
@given(tasks_strategy)
def test_a_half_speed_cpu_is_a_full_cpu_with_double_the_work(tasks: list[Task]) -> None:
    doubled = [Task(2 * t.runtime_ns, t.deadline_ns, t.period_ns) for t in tasks]
    assert edf_schedulable(tasks, BW_UNIT // 2) == edf_schedulable(doubled, BW_UNIT)


def test_constrained_deadlines_can_fail_where_bandwidth_fits() -> None:
    # U = 0.5 + 0.5 = 1 fits by bandwidth, but both need their 5 units by t = 6.
    tasks = [Task(5, 6, 10), Task(5, 6, 10)]
    assert not edf_schedulable(tasks)
    assert demand(tasks, 6) == 10


def test_implicit_deadlines_fit_up_to_full_utilisation() -> None:
    assert edf_schedulable([Task(1, 2, 2), Task(1, 4, 4), Task(1, 4, 4)])
    assert not edf_schedulable([Task(1, 2, 2), Task(1, 4, 4), Task(2, 4, 4)])


def test_demand_counts_jobs_whose_deadline_has_passed() -> None:
    assert demand([Task(2, 3, 5)], Fraction(2)) == 0
    assert demand([Task(2, 3, 5)], 3) == 2
    assert demand([Task(2, 3, 5)], 8) == 4


def test_empty_and_zero_capacity() -> None:
    assert edf_schedulable([])
    assert not edf_schedulable([Task(1, 2, 2)], 0)
