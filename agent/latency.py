"""Keep the node's CPUs out of slow idle states: a PM QoS CPU latency request, held while the agent runs.

A deadline task's timer wakes it on time only if its CPU answers the timer
interrupt on time. A CPU in a deep idle state takes long to wake; a vCPU that
halts goes back to its host, which may run it again only milliseconds later.
On the development VM (Firecracker, ``cpuidle-haltpoll`` with no polling) an
idle RT-DRA pod's timer came 9-13 ms late about once in 1,000 jobs, and its
p99 response was 2.6 ms against 1.0 ms with the CPUs kept polling
(``docs/benchmark-rt.md``). Real-time setups ask the kernel for a bound on the
CPUs' wake-up latency (tuned's ``realtime`` profile, cyclictest): they write
the bound in microseconds, as a 32-bit integer, to ``/dev/cpu_dma_latency``
and keep the file open. The cpuidle governor then picks no state slower to
leave than the smallest bound asked for (0: poll, never halt); the kernel
drops the request when the file is closed - also when the process dies - so
nothing is left behind.

The price is power: with 0 the CPUs never sleep. It is the agent's
``--cpu-latency-us`` option, off by default.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Final

PM_QOS_DEVICE: Final = Path("/dev/cpu_dma_latency")


class LatencyError(OSError):
    """The request could not be made (no such device, not root)."""


def effective_latency_us(device: Path = PM_QOS_DEVICE) -> int:
    """The bound the kernel applies now: the smallest any holder asked for (a large default if none)."""
    with device.open("rb") as f:
        (value,) = struct.unpack("i", f.read(4))
    return int(value)


class LatencyRequest:
    """One request of at most ``us`` microseconds of CPU wake-up latency, held from :meth:`hold` to :meth:`close`."""

    def __init__(self, us: int, device: Path = PM_QOS_DEVICE) -> None:
        if us < 0:
            raise ValueError(f"a CPU latency bound is 0 or more microseconds, not {us}")
        self.us = us
        self.device = device
        self._fd: int | None = None

    def hold(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as err:
            raise LatencyError(
                err.errno, f"cannot open {self.device} for a CPU latency request: {err.strerror}"
            ) from None
        try:
            os.write(fd, struct.pack("i", self.us))
        except OSError as err:
            os.close(fd)
            raise LatencyError(err.errno, f"writing {self.us} to {self.device}: {err.strerror}") from None
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def close(self) -> None:
        """Drop the request (the kernel forgets it as the file closes)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LatencyRequest:
        self.hold()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
