"""Bandwidth is the kernel's fixed point, bit for bit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtdra.bandwidth import BW_UNIT, bandwidth, cpu_capacity, format_ns, max_runtime, percent, rt_capacity, to_ratio


@given(st.integers(1, 1 << 62), st.integers(0, 1 << 62))
def test_bandwidth_is_the_kernels_to_ratio(period: int, runtime: int) -> None:
    # kernel/sched/core.c: to_ratio() = div64_u64(runtime << BW_SHIFT, period)
    assert to_ratio(period, runtime) == (runtime << 20) // period
    assert bandwidth(runtime, period) == (runtime << 20) // period


def test_default_rt_sysctls_give_the_kernels_996147() -> None:
    assert rt_capacity(950_000, 1_000_000) == 996147


def test_fair_server_is_subtracted_as_measured_not_assumed() -> None:
    fair_server = to_ratio(1_000_000_000, 50_000_000)
    assert fair_server == 52428
    assert cpu_capacity(950_000, 1_000_000, fair_server) == 996147 - 52428
    assert cpu_capacity(950_000, 1_000_000) == 996147


def test_rt_runtime_minus_one_leaves_one_whole_cpu() -> None:
    assert rt_capacity(-1, 1_000_000) == BW_UNIT


def test_bad_periods_are_refused() -> None:
    with pytest.raises(ValueError, match="period must be positive"):
        to_ratio(0, 1)


@pytest.mark.parametrize(
    ("ns", "text"), [(0, "0ns"), (1500, "1500ns"), (2000, "2us"), (3_000_000, "3ms"), (10**9, "1s")]
)
def test_durations_render_exactly(ns: int, text: str) -> None:
    assert format_ns(ns) == text


def test_percent_reads_as_a_share_of_one_cpu() -> None:
    assert percent(BW_UNIT // 8) == "12.5%"


@given(st.integers(0, 4 * BW_UNIT), st.integers(1, 1 << 40))
def test_max_runtime_is_the_largest_runtime_within_a_bandwidth(bw: int, period: int) -> None:
    runtime = max_runtime(bw, period)
    assert bandwidth(runtime, period) <= bw
    assert bandwidth(runtime + 1, period) > bw
