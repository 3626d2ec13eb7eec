"""Deadline bandwidth, counted exactly as the Linux kernel counts it.

The kernel (``kernel/sched/deadline.c``) keeps bandwidth as a fixed-point
fraction of one CPU with 20 fractional bits: ``to_ratio(period, runtime) =
(runtime << 20) / period``, and a CPU's deadline capacity as
``to_ratio(sched_rt_period_us, sched_rt_runtime_us)``. This module is the one
place RT-DRA computes either; nothing else re-derives them. Kernel-reserved
servers (the fair server since 6.12) are inputs here, never assumed values:
the node agent measures them.
"""

from __future__ import annotations

from typing import Final

BW_SHIFT: Final = 20
#: One whole CPU in the kernel's fixed point.
BW_UNIT: Final = 1 << BW_SHIFT

NSEC_PER_USEC: Final = 1_000
NSEC_PER_MSEC: Final = 1_000_000
NSEC_PER_SEC: Final = 1_000_000_000

#: Kernel parameter limits (``__checkparam_dl`` and the default sysctls).
RUNTIME_MIN_NS: Final = 1 << 10  # DL_SCALE: runtimes below 1024 ns are refused
PERIOD_MIN_US_DEFAULT: Final = 100  # kernel.sched_deadline_period_min_us
PERIOD_MAX_US_DEFAULT: Final = 1 << 22  # kernel.sched_deadline_period_max_us
#: The kernel refuses deadlines and periods with the most significant bit set.
TIME_MAX_NS: Final = (1 << 63) - 1


def to_ratio(period: int, runtime: int) -> int:
    """``runtime/period`` in the kernel's fixed point (units must match)."""
    if period <= 0:
        raise ValueError(f"period must be positive, got {period}")
    if runtime < 0:
        raise ValueError(f"runtime must not be negative, got {runtime}")
    return (runtime << BW_SHIFT) // period


def bandwidth(runtime_ns: int, period_ns: int) -> int:
    """A reservation's bandwidth as the kernel admits it."""
    return to_ratio(period_ns, runtime_ns)


def max_runtime(bw: int, period_ns: int) -> int:
    """The largest runtime whose :func:`bandwidth` over ``period_ns`` is at most ``bw`` (its inverse)."""
    if period_ns <= 0:
        raise ValueError(f"period must be positive, got {period_ns}")
    return max(0, ((bw + 1) * period_ns - 1) >> BW_SHIFT)


def rt_capacity(rt_runtime_us: int, rt_period_us: int) -> int:
    """The per-CPU deadline limit the kernel derives from the RT sysctls.

    ``sched_rt_runtime_us = -1`` switches the kernel's admission off; the
    physical limit of one whole CPU still holds, so that is what we return.
    """
    if rt_runtime_us < 0:
        return BW_UNIT
    return to_ratio(rt_period_us, rt_runtime_us)


def cpu_capacity(rt_runtime_us: int, rt_period_us: int, reserved_bw: int = 0) -> int:
    """What is left for tasks on one CPU after kernel-reserved servers."""
    return max(0, rt_capacity(rt_runtime_us, rt_period_us) - reserved_bw)


def percent(bw: int) -> str:
    """A bandwidth as a percentage of one CPU, for messages (``"12.5%"``)."""
    return f"{bw * 100 / BW_UNIT:.1f}%"


def format_ns(ns: int) -> str:
    """The shortest exact rendering of a duration (``1500us``, ``2ms``)."""
    for unit, scale in (("s", NSEC_PER_SEC), ("ms", NSEC_PER_MSEC), ("us", NSEC_PER_USEC)):
        if ns and ns % scale == 0:
            return f"{ns // scale}{unit}"
    return f"{ns}ns"
