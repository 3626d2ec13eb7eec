"""Suite-wide policy for tests that need the real kernel.

Tests marked ``kernel`` need root and a kernel with SCHED_DEADLINE. Where
those are missing they skip with the reason - unless ``RTDRA_REQUIRE_KERNEL=1``
(CI sets it), where a missing prerequisite is a failure, so a green CI run
always means the kernel tests really ran. (The ``e2e`` marker follows the same
rule with ``RTDRA_REQUIRE_E2E``; see ``tests/e2e/conftest.py``.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def kernel_unavailable() -> str | None:
    """Why real SCHED_DEADLINE tests cannot run here, or ``None`` if they can."""
    if os.geteuid() != 0:
        return "needs root (CAP_SYS_NICE) to set SCHED_DEADLINE"
    if not Path("/proc/sys/kernel/sched_deadline_period_max_us").exists():
        return "this kernel has no SCHED_DEADLINE (no kernel.sched_deadline_period_max_us)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable()
    if reason is None:
        return
    if os.environ.get("RTDRA_REQUIRE_KERNEL") == "1":
        pytest.fail(f"RTDRA_REQUIRE_KERNEL=1 but {reason}")
    pytest.skip(reason)
