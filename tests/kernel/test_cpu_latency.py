"""The agent's CPU wake-up latency request (``agent.latency``), against this machine's kernel.

The request lives as long as the file is open: the tests read the bound the kernel applies
(``/dev/cpu_dma_latency``) while it is held, after it is closed, and after a holder is SIGKILLed -
the machine ends as it was found every time, with nothing to undo.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.latency import PM_QOS_DEVICE, LatencyRequest, effective_latency_us

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pm_qos(kernel_lock: None) -> int:
    if not PM_QOS_DEVICE.exists():
        pytest.skip(f"{PM_QOS_DEVICE} does not exist here")
    return effective_latency_us()


def test_a_held_request_bounds_the_cpus_wake_up_latency_until_it_is_closed(pm_qos: int) -> None:
    assert pm_qos > 0, "another process holds a bound of 0 already: nothing to see"
    with LatencyRequest(0) as request:
        assert request.held
        assert effective_latency_us() == 0
    assert effective_latency_us() == pm_qos


def test_the_kernel_drops_the_request_of_an_agent_that_was_killed(pm_qos: int) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from agent.latency import LatencyRequest; r = LatencyRequest(0); r.hold(); "
            "print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert effective_latency_us() == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    deadline = time.monotonic() + 5
    while effective_latency_us() != pm_qos and time.monotonic() < deadline:
        time.sleep(0.01)  # the file is closed as the process is torn down
    assert effective_latency_us() == pm_qos


def test_a_request_on_a_device_that_cannot_take_it_names_the_device(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-device"
    with pytest.raises(OSError, match=str(missing)):
        LatencyRequest(0, missing).hold()
    with pytest.raises(ValueError, match="0 or more"):
        LatencyRequest(-1)
