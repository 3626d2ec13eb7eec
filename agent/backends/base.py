"""What every backend takes, returns and raises."""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.oci import ContainerRef
from rtdra import tasks
from rtdra.ledger import Slot


class EnforcementError(RuntimeError):
    """The kernel (or cgroup tree) refused; ``errno`` says how, the message says what."""

    def __init__(self, message: str, err: int = errno_mod.EIO) -> None:
        super().__init__(message)
        self.errno = err

    @property
    def reason(self) -> str:
        return {errno_mod.EBUSY: "KernelRefusedBandwidth", errno_mod.EPERM: "KernelRefusedPermission"}.get(
            self.errno, "KernelRefusedReservation" if self.errno == errno_mod.EINVAL else "ReservationFailed"
        )


@dataclass(frozen=True, slots=True)
class Target:
    """A container to put under its allocation: who it is and the slots it got."""

    ref: ContainerRef
    slots: tuple[Slot, ...]


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One task under one slot's reservation."""

    tid: int
    cpu: int
    #: The cpuset cgroup (relative to the cpuset mount) it came from, when moved into a partition.
    cpuset_from: str | None = None
    #: Its start time (``rtdra.tasks.task_start_time``): a reused thread id is not this task. 0: unknown.
    start_time: int = 0
    #: Its CPU affinity before we widened it (global mode), restored on release; None: unchanged.
    affinity: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tid": self.tid, "cpu": self.cpu}
        if self.cpuset_from is not None:
            out["cpusetFrom"] = self.cpuset_from
        if self.start_time:
            out["startTime"] = self.start_time
        if self.affinity is not None:
            out["affinity"] = list(self.affinity)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TaskRecord:
        affinity = obj.get("affinity")
        return cls(
            int(obj["tid"]),
            int(obj["cpu"]),
            obj.get("cpusetFrom"),
            int(obj.get("startTime", 0)),
            tuple(int(c) for c in affinity) if affinity is not None else None,
        )

    def is_alive(self) -> bool:
        """Whether this very task still exists (same id *and* start time, where known)."""
        now = tasks.task_start_time(self.tid)
        return now != 0 and self.start_time in (0, now)


@dataclass(frozen=True, slots=True)
class Applied:
    """What a backend did for one container: enough to undo it after a restart."""

    backend: str
    container: str
    container_id: str
    pid: int
    slots: tuple[Slot, ...]
    tasks: tuple[TaskRecord, ...] = ()
    #: hcbs: cgroup file path -> value before we wrote it.
    restore: Mapping[str, str] = field(default_factory=dict)
    #: Non-empty when the kernel refused and the container runs unreserved (fail-open).
    error: str = ""
    #: The container process's start time (``rtdra.tasks.task_start_time``); 0: unknown.
    start_time: int = 0
    #: DRA mode: the prepared claim request (``<claim uid>/<request>``) the slots came from; "": the NAS.
    claim: str = ""

    def is_alive(self) -> bool:
        """Whether the container's process still runs (the same process, not a reused id)."""
        now = tasks.task_start_time(self.pid) if self.pid > 0 else 0
        return now != 0 and self.start_time in (0, now)

    @property
    def free_slots(self) -> tuple[Slot, ...]:
        used = [t.cpu for t in self.tasks]
        out = []
        for s in self.slots:
            if s.cpu in used:
                used.remove(s.cpu)
            else:
                out.append(s)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backend": self.backend,
            "containerID": self.container_id,
            "pid": self.pid,
            "slots": [s.to_json() for s in self.slots],
            "tasks": [t.to_json() for t in self.tasks],
        }
        if self.restore:
            out["restore"] = dict(self.restore)
        if self.error:
            out["error"] = self.error
        if self.start_time:
            out["startTime"] = self.start_time
        if self.claim:
            out["claim"] = self.claim
        return out

    @classmethod
    def from_json(cls, container: str, obj: Mapping[str, Any]) -> Applied:
        return cls(
            backend=str(obj.get("backend", "")),
            container=container,
            container_id=str(obj.get("containerID", "")),
            pid=int(obj.get("pid", 0)),
            slots=tuple(Slot.from_json(s) for s in obj.get("slots") or []),
            tasks=tuple(TaskRecord.from_json(t) for t in obj.get("tasks") or []),
            restore=dict(obj.get("restore") or {}),
            error=str(obj.get("error", "")),
            start_time=int(obj.get("startTime", 0)),
            claim=str(obj.get("claim", "")),
        )


class Backend(Protocol):
    @property
    def name(self) -> str:
        """The backend's name, as in ``--backend`` and the records."""
        ...

    def apply(self, target: Target) -> Applied:
        """Reserve; all or nothing (raises :class:`EnforcementError` having undone any part)."""
        ...

    def adopt(self, applied: Applied) -> Applied:
        """Bring tasks that appeared since under the free slots; drop dead ones."""
        ...

    def release(self, applied: Applied) -> None:
        """Undo ``applied`` (idempotent; tolerates tasks that are gone)."""
        ...
