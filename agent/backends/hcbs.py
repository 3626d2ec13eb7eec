"""The ``hcbs`` backend: per-CPU RT runtime on the container's cgroup.

For kernels with the hierarchical CBS patch, where an RT cgroup's runtime is
served by per-CPU deadline servers. Two interfaces exist:

- cgroup v1, the seed driver's patched kernel: ``cpu.rt_multi_runtime_us``.
  The container's file takes ``"<cpulist> <runtime_us> "``; reading any
  level gives one runtime per CPU, space-separated. Each ancestor up to (not
  including) the root - the pod cgroup, the QoS class, ``kubepods`` - must hold
  at least what its children hold, so the seed driver added the container's
  per-CPU runtime to each of them first (top-down) and took it off on release.
  We do the same, recording every previous value so release restores it
  exactly. ``cpu.rt_period_us`` is set to the allocation's period.
- cgroup v2, the current patch series: ``cpu.rt.max`` as ``"<runtime_us>
  <period_us>"`` (the ``cpu.max`` convention) on the container's cgroup.

No HCBS kernel runs here: this backend is tested against fake cgroup trees in
both formats (``tests/unit/test_agent_units.py``).
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Final, Literal

from agent.backends.base import Applied, EnforcementError, Target
from rtdra.bandwidth import NSEC_PER_USEC
from rtdra.host import format_cpulist

MULTI_RUNTIME: Final = "cpu.rt_multi_runtime_us"
RT_PERIOD: Final = "cpu.rt_period_us"
RT_MAX: Final = "cpu.rt.max"
#: Marks an ancestor we added to: release subtracts our share rather than restoring a stale value.
SUBTRACT: Final = "<subtract>"


def _format_multi(runtimes: list[int]) -> str:
    """The seed kernel's write format for a whole level: ``"<cpu> <runtime_us> ..."``."""
    return " ".join(f"{cpu} {runtime}" for cpu, runtime in enumerate(runtimes)) + " "


def container_cgroup(pid: int, version: Literal["v1", "v2"], proc: Path = Path("/proc")) -> str:
    """``pid``'s cgroup path: the v1 ``cpu`` controller's, or the v2 unified one."""
    for line in (proc / str(pid) / "cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if version == "v2" and hid == "0" and controllers == "":
            return path
        if version == "v1" and "cpu" in controllers.split(","):
            return path
    raise EnforcementError(f"process {pid} has no {version} cpu cgroup", errno.ENOENT)


def read_multi_runtime(path: Path) -> list[int]:
    """One runtime per CPU. The kernel shows ``"r0 r1 ..."``; a file holding the
    write form ``"0 r0 1 r1 ..."`` (as in a fake tree) is read too."""
    values = [int(v) for v in path.read_text().split()]
    if len(values) >= 2 and len(values) % 2 == 0 and values[0::2] == list(range(len(values) // 2)):
        return values[1::2]
    return values


class HcbsBackend:
    name: Final = "hcbs"

    def __init__(self, cgroup_root: Path, version: Literal["v1", "v2"], proc: Path = Path("/proc")) -> None:
        self.root = cgroup_root
        self.version = version
        self.proc = proc

    def _write(self, path: Path, value: str, restore: dict[str, str]) -> None:
        if str(path) not in restore:
            restore[str(path)] = path.read_text() if path.exists() else ""
        try:
            path.write_text(value)
        except OSError as err:
            raise EnforcementError(
                f"writing {value.strip()!r} to {path}: {err.strerror or err}", err.errno or errno.EIO
            ) from None

    def apply(self, target: Target) -> Applied:
        ref = target.ref
        if not target.slots:
            return Applied(self.name, ref.container, ref.container_id, ref.pid, target.slots)
        cgroup = self.root / container_cgroup(ref.pid, self.version, self.proc).lstrip("/")
        period_us = target.slots[0].period_ns // NSEC_PER_USEC
        runtime_us = target.slots[0].runtime_ns // NSEC_PER_USEC
        if any(
            s.period_ns != target.slots[0].period_ns or s.runtime_ns != target.slots[0].runtime_ns for s in target.slots
        ):
            raise EnforcementError(f"{ref}: hcbs needs the same runtime and period on every CPU", errno.EINVAL)
        restore: dict[str, str] = {}
        try:
            if self.version == "v2":
                self._write(cgroup / RT_MAX, f"{runtime_us} {period_us}", restore)
            else:
                cpus = [s.cpu for s in target.slots]
                ancestors = [p for p in reversed(cgroup.parents) if p != self.root and self.root in p.parents]
                for level in ancestors:  # top-down: a child never holds more than its parent
                    current = read_multi_runtime(level / MULTI_RUNTIME)
                    for cpu in cpus:
                        if cpu >= len(current):
                            raise EnforcementError(f"{level / MULTI_RUNTIME} has no CPU {cpu}", errno.EINVAL)
                        current[cpu] += runtime_us
                    self._write(level / MULTI_RUNTIME, _format_multi(current), restore)
                    restore[str(level / MULTI_RUNTIME)] = SUBTRACT
                self._write(cgroup / RT_PERIOD, str(period_us), restore)
                self._write(cgroup / MULTI_RUNTIME, f"{format_cpulist(cpus)} {runtime_us} ", restore)
        except EnforcementError as err:
            self._restore(restore, [s.cpu for s in target.slots], runtime_us)
            raise EnforcementError(f"{ref}: {err}", err.errno) from None
        return Applied(self.name, ref.container, ref.container_id, ref.pid, target.slots, restore=restore)

    def adopt(self, applied: Applied) -> Applied:
        return applied  # the cgroup covers every task, present and future

    @staticmethod
    def _restore(restore: dict[str, str], cpus: list[int] | None = None, runtime_us: int = 0) -> None:
        for path, value in reversed(list(restore.items())):  # bottom-up
            with contextlib.suppress(OSError, ValueError, IndexError):
                if value != SUBTRACT:
                    Path(path).write_text(value)
                elif cpus:
                    # Take our share off again; siblings may have changed it since.
                    current = read_multi_runtime(Path(path))
                    for cpu in cpus:
                        current[cpu] = max(0, current[cpu] - runtime_us)
                    Path(path).write_text(_format_multi(current))

    def release(self, applied: Applied) -> None:
        if not applied.slots:
            return
        cpus = [s.cpu for s in applied.slots]
        self._restore(dict(applied.restore), cpus, applied.slots[0].runtime_ns // NSEC_PER_USEC)
