"""Exclusive cpuset partitions (cgroup v1): per-CPU deadline admission.

The kernel admits SCHED_DEADLINE per *root domain*, and a task may only
become SCHED_DEADLINE if its affinity covers its whole root domain (else
EPERM). With one root domain per node, admission is node-wide and the per-CPU
allocation is bookkeeping. Partitioned mode gives each real-time CPU its own
root domain: under ``<cpuset>/<name>/`` one child per CPU with
``cpuset.cpus=<cpu>``, ``cpuset.cpu_exclusive=1`` and load balancing on, with
load balancing off in the parent and in the cpuset root
(``cpuset.sched_load_balance=0``), so ``partition_sched_domains`` builds a
one-CPU root domain per child, each carrying its CPU's fair server. Tasks
moved into ``cpu<N>`` then get CPU N and the kernel's admission becomes per CPU.

The original values are recorded in a JSON file before anything changes and
restored on teardown - also by a later process (after a crash) reading that file.
Other load-balanced cpusets spanning the real-time CPUs (e.g. a kubepods
cpuset with every CPU) would merge the domains again: keep them off these CPUs.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from rtdra import host, sched


class PartitionError(RuntimeError):
    pass


def cpuset_of(tid: int) -> str | None:
    """The task's cpuset cgroup path (v1, relative to the mount), or None."""
    try:
        text = Path(f"/proc/{tid}/cpuset").read_text().strip()
    except OSError:
        return None
    return text or None


class Partitions:
    """The per-CPU exclusive cpusets under ``mount/name``."""

    def __init__(self, mount: Path, name: str, cpus: Iterable[int], record_file: Path) -> None:
        self.mount = mount
        self.name = name
        self.cpus = tuple(sorted(set(cpus)))
        self.record_file = record_file

    @property
    def parent(self) -> Path:
        return self.mount / self.name

    def dir_of(self, cpu: int) -> Path:
        return self.parent / f"cpu{cpu}"

    def tasks_file(self, cpu: int) -> Path:
        return self.dir_of(cpu) / "tasks"

    def relative(self, cpu: int) -> str:
        return "/" + str(self.dir_of(cpu).relative_to(self.mount))

    def _write(self, path: Path, value: str) -> None:
        try:
            path.write_text(value)
        except OSError as err:
            raise PartitionError(f"writing {value!r} to {path}: {err.strerror or err}") from None

    def setup(self) -> None:
        """Create the partitions (idempotent); record what we change first."""
        root_flag = self.mount / "cpuset.sched_load_balance"
        if not self.record_file.exists():
            self.record_file.parent.mkdir(parents=True, exist_ok=True)
            record = {
                "mount": str(self.mount),
                "name": self.name,
                "rootSchedLoadBalance": root_flag.read_text().strip(),
            }
            tmp = self.record_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.record_file)
        try:
            mems = (self.mount / "cpuset.mems").read_text().strip()
            self.parent.mkdir(exist_ok=True)
            self._write(self.parent / "cpuset.cpus", host.format_cpulist(self.cpus))
            self._write(self.parent / "cpuset.mems", mems)
            self._write(self.parent / "cpuset.cpu_exclusive", "1")
            self._write(self.parent / "cpuset.sched_load_balance", "0")
            for cpu in self.cpus:
                d = self.dir_of(cpu)
                d.mkdir(exist_ok=True)
                self._write(d / "cpuset.cpus", str(cpu))
                self._write(d / "cpuset.mems", mems)
                self._write(d / "cpuset.cpu_exclusive", "1")
                self._write(d / "cpuset.sched_load_balance", "1")
            self._write(root_flag, "0")
        except (OSError, PartitionError):
            self.teardown()
            raise

    def move(self, tid: int, cpu: int) -> None:
        self._write(self.tasks_file(cpu), str(tid))

    def move_back(self, tid: int, cpuset: str | None) -> None:
        target = self.mount / (cpuset or "/").lstrip("/")
        with contextlib.suppress(OSError):  # the task may be gone, or its cgroup
            (target / "tasks").write_text(str(tid))

    def teardown(self) -> None:
        """Remove the partitions and restore the cpuset root exactly (idempotent)."""
        root_tasks = self.mount / "tasks"
        for cpu in self.cpus:
            d = self.dir_of(cpu)
            if not d.is_dir():
                continue
            for line in (d / "tasks").read_text().split():
                tid = int(line)
                with contextlib.suppress(sched.SchedError):
                    if sched.sched_getattr(tid).is_deadline:
                        sched.set_other(tid)
                with contextlib.suppress(OSError):
                    root_tasks.write_text(str(tid))
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()
        if self.parent.is_dir():
            with contextlib.suppress(FileNotFoundError):
                self.parent.rmdir()
        restore_root(self.record_file)


def restore_root(record_file: Path) -> None:
    """Put back the cpuset root's ``sched_load_balance`` as recorded, then forget the record."""
    if not record_file.exists():
        return
    record = json.loads(record_file.read_text())
    flag = Path(record["mount"]) / "cpuset.sched_load_balance"
    flag.write_text(str(record["rootSchedLoadBalance"]))
    record_file.unlink()
