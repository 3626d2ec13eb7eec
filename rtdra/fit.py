"""Does one more reservation fit? The per-CPU and node-wide tests.

Per CPU, a reservation fits when the kernel would admit the bandwidth
(Σ bw ≤ capacity, the fixed-point sum of ``rtdra.bandwidth``) and, where any
deadline on that CPU is shorter than its period, EDF still meets every
deadline (the exact processor-demand test of ``rtdra.edf``). Node-wide, the
kernel's own root-domain test must pass too: Σ bw ≤ the root domain's free
deadline capacity. These are the only fit rules in RT-DRA; the ledger,
placement, the extender and the simulator all call them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

from rtdra.bandwidth import bandwidth
from rtdra.edf import Timed, edf_schedulable

#: ``demand``: exact EDF test where deadlines are constrained (default);
#: ``bandwidth``: the kernel's admission test alone.
DeadlineTest = Literal["demand", "bandwidth"]
DEFAULT_TEST: Final[DeadlineTest] = "demand"


def is_constrained(timed: Timed) -> bool:
    return timed.deadline_ns < timed.period_ns


def fits_on_cpu(
    existing: Iterable[Timed],
    new: Timed,
    capacity: int,
    *,
    used_bw: int | None = None,
    test: DeadlineTest = DEFAULT_TEST,
) -> bool:
    """Whether ``new`` fits beside ``existing`` on a CPU with ``capacity``.

    ``used_bw`` may pass the precomputed Σ bw of ``existing`` (it must equal it).
    """
    slots = list(existing)
    used = used_bw if used_bw is not None else sum(bandwidth(s.runtime_ns, s.period_ns) for s in slots)
    if used + bandwidth(new.runtime_ns, new.period_ns) > capacity:
        return False
    if test == "demand" and (is_constrained(new) or any(is_constrained(s) for s in slots)):
        return edf_schedulable([*slots, new], capacity)
    return True


def fits_root_domain(total_bw: int, new_bw: int, root_capacity: int) -> bool:
    """The kernel's ``__dl_overflow`` test for the root domain, as a fit."""
    return total_bw + new_bw <= root_capacity
