"""The ``deadline`` backend: SCHED_DEADLINE on the container's tasks (stock kernels).

One reservation per allocated CPU: the container's main process takes the
first slot, further threads the next ones (the reconcile loop adopts threads
that appear later); tasks beyond the slots stay ordinary tasks. Under a real
runtime the ``createRuntime`` hook runs while the container's process is
still the runtime's init (runc's is a Go program with helper threads): a
further slot may land on one of those threads, which ends when the init
execs the container's program; the reconcile loop then drops the dead task
and gives its slot to the next thread the program starts. Every
reservation carries SCHED_FLAG_RESET_ON_FORK, so the container can still fork
and create threads (which start as SCHED_OTHER).

Global mode (default): each reserved task gets the whole root domain as its
affinity - the kernel refuses (EPERM) a deadline task narrower than its root
domain - so EDF is global and the per-CPU allocation is bookkeeping; the
kernel's admission is root-domain wide. The affinity it had is recorded and
given back on release. Partitioned mode: each reserved task
is moved into its CPU's exclusive cpuset (:mod:`agent.cpuset`) and admission
is per CPU. The kernel judges by the root domain of the CPU the task last ran
on, so a blocked task is woken once to migrate first (``rtdra.tasks.settle_on``).

Release returns live tasks to SCHED_OTHER, gives back their affinity or
moves them back to their cpuset, then has the kernel rebuild its root domains:
on this kernel a blocked task leaving SCHED_DEADLINE otherwise keeps its
bandwidth counted (``rtdra.host``). A task is recognised by its id *and* start
time, so a reused id (after a restart of the agent) is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterable
from dataclasses import replace
from typing import Final

from agent.backends.base import Applied, EnforcementError, Target, TaskRecord
from agent.cpuset import Partitions, cpuset_of
from rtdra import host, sched, tasks
from rtdra.bandwidth import format_ns
from rtdra.ledger import Slot

log = logging.getLogger(__name__)


def _tasks_of(pid: int) -> list[int]:
    tids = sched.threads_of(pid)
    return sorted(tids, key=lambda t: (t != pid, t))


class DeadlineBackend:
    name: Final = "deadline"

    def __init__(
        self,
        root_domain_cpus: Iterable[int],
        partitions: Partitions | None = None,
        *,
        repair_accounting: bool = True,
    ) -> None:
        self.root_domain_cpus = frozenset(root_domain_cpus)
        self.partitions = partitions
        self.repair_accounting = repair_accounting

    def _reserve(self, tid: int, slot: Slot) -> TaskRecord:
        attr = sched.deadline(slot.runtime_ns, slot.deadline_ns, slot.period_ns)
        started = tasks.task_start_time(tid)
        if self.partitions is None:
            before = sched.get_affinity(tid)
            if before != self.root_domain_cpus:
                sched.set_affinity(tid, self.root_domain_cpus)
            try:
                sched.sched_setattr(tid, attr)
            except sched.SchedError:
                if before != self.root_domain_cpus:
                    with contextlib.suppress(sched.SchedError):
                        sched.set_affinity(tid, before)
                raise
            widened = tuple(sorted(before)) if before != self.root_domain_cpus else None
            return TaskRecord(tid, slot.cpu, start_time=started, affinity=widened)
        origin = cpuset_of(tid)
        try:
            self.partitions.move(tid, slot.cpu)
        except OSError as err:
            raise sched.error_for(
                err.errno or errno.EIO, f"moving task {tid} into CPU {slot.cpu}'s partition"
            ) from None
        try:
            tasks.settle_on(tid, (slot.cpu,))
            sched.sched_setattr(tid, attr)
        except sched.SchedError:
            self.partitions.move_back(tid, origin)
            raise
        return TaskRecord(tid, slot.cpu, origin or "/", start_time=started)

    def _undo(self, records: Iterable[TaskRecord]) -> bool:
        """Return tasks to SCHED_OTHER and their affinity or cpuset; whether any was alive."""
        any_alive = False
        for record in records:
            if not record.is_alive():
                continue
            any_alive = True
            with contextlib.suppress(sched.NoSuchTask):
                sched.set_other(record.tid)
            if record.affinity is not None:
                with contextlib.suppress(sched.SchedError):  # gone, or its cpuset shrank meanwhile
                    sched.set_affinity(record.tid, record.affinity)
            if self.partitions is not None and record.cpuset_from is not None:
                self.partitions.move_back(record.tid, record.cpuset_from)
        return any_alive

    def _repair(self) -> None:
        if self.repair_accounting:
            host.rebuild_root_domains()

    def apply(self, target: Target) -> Applied:
        ref = target.ref
        tids = _tasks_of(ref.pid)
        if not tids:
            raise EnforcementError(f"{ref}: process {ref.pid} is gone", errno.ESRCH)
        records: list[TaskRecord] = []
        for slot, tid in zip(target.slots, tids, strict=False):  # more slots or more tasks: both fine
            try:
                records.append(self._reserve(tid, slot))
            except sched.SchedError as err:
                if self._undo(records):
                    self._repair()
                raise EnforcementError(
                    f"{ref}: the kernel refused SCHED_DEADLINE runtime={format_ns(slot.runtime_ns)} "
                    f"deadline={format_ns(slot.deadline_ns)} period={format_ns(slot.period_ns)} "
                    f"for CPU {slot.cpu} on task {tid}: {os.strerror(err.errno or 0)} "
                    f"({errno.errorcode.get(err.errno or 0, err.errno)})",
                    err.errno or errno.EIO,
                ) from None
        return Applied(self.name, ref.container, ref.container_id, ref.pid, target.slots, tuple(records))

    def adopt(self, applied: Applied) -> Applied:
        live = tuple(t for t in applied.tasks if t.is_alive())
        current = replace(applied, tasks=live)
        free = list(current.free_slots)
        if not free:
            return current
        known = {t.tid for t in live}
        added: list[TaskRecord] = []
        for tid in _tasks_of(applied.pid):
            if not free:
                break
            if tid in known:
                continue
            slot = free[0]
            try:
                added.append(self._reserve(tid, slot))
                free.pop(0)
            except sched.SchedError as err:
                log.warning("adopting task %s of %s: %s", tid, applied.container, err)
        return replace(current, tasks=live + tuple(added))

    def release(self, applied: Applied) -> None:
        if self._undo(applied.tasks):
            self._repair()
