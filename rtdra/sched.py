"""The kernel's scheduling syscalls, as small typed calls.

Python's ``os`` module has ``sched_setscheduler`` but not ``sched_setattr``,
the only call that can set SCHED_DEADLINE's runtime, deadline and period.
This module wraps ``sched_setattr``/``sched_getattr`` with ``ctypes`` (the raw
syscalls: glibc only gained wrappers in 2.41), turns their errors into typed
exceptions that keep the errno (a refusal is information the caller reports,
never something to swallow), and reads ``/proc/<pid>/sched``.

It is one of the core's few I/O edges: no policy lives here, only the calls.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Final

SCHED_OTHER: Final = 0
SCHED_FIFO: Final = 1
SCHED_RR: Final = 2
SCHED_BATCH: Final = 3
SCHED_IDLE: Final = 5
SCHED_DEADLINE: Final = 6

SCHED_FLAG_RESET_ON_FORK: Final = 0x01
SCHED_FLAG_RECLAIM: Final = 0x02
SCHED_FLAG_DL_OVERRUN: Final = 0x04

#: ``SCHED_ATTR_SIZE_VER1``: the struct with the utilisation clamps.
SCHED_ATTR_SIZE: Final = 56

POLICY_NAMES: Final = {
    SCHED_OTHER: "SCHED_OTHER",
    SCHED_FIFO: "SCHED_FIFO",
    SCHED_RR: "SCHED_RR",
    SCHED_BATCH: "SCHED_BATCH",
    SCHED_IDLE: "SCHED_IDLE",
    SCHED_DEADLINE: "SCHED_DEADLINE",
}

# (sched_setattr, sched_getattr) by machine; see the kernel's syscall tables.
_SYSCALLS: Final = {
    "x86_64": (314, 315),
    "aarch64": (274, 275),
    "arm64": (274, 275),
    "riscv64": (274, 275),
    "ppc64le": (355, 356),
    "s390x": (345, 346),
}


class _SchedAttr(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


assert ctypes.sizeof(_SchedAttr) == SCHED_ATTR_SIZE


@dataclass(frozen=True, slots=True)
class SchedAttr:
    """A task's scheduling attributes (``struct sched_attr``), times in ns."""

    policy: int = SCHED_OTHER
    flags: int = 0
    nice: int = 0
    priority: int = 0
    runtime_ns: int = 0
    deadline_ns: int = 0
    period_ns: int = 0

    @property
    def is_deadline(self) -> bool:
        return self.policy == SCHED_DEADLINE

    @property
    def reset_on_fork(self) -> bool:
        return bool(self.flags & SCHED_FLAG_RESET_ON_FORK)

    @property
    def policy_name(self) -> str:
        return POLICY_NAMES.get(self.policy, str(self.policy))


def deadline(runtime_ns: int, deadline_ns: int, period_ns: int, *, reset_on_fork: bool = True) -> SchedAttr:
    """SCHED_DEADLINE attributes; forks run SCHED_OTHER unless told otherwise."""
    return SchedAttr(
        policy=SCHED_DEADLINE,
        flags=SCHED_FLAG_RESET_ON_FORK if reset_on_fork else 0,
        runtime_ns=runtime_ns,
        deadline_ns=deadline_ns,
        period_ns=period_ns,
    )


OTHER: Final = SchedAttr()

#: The fields ``sched_setattr`` writes and ``sched_getattr`` reads back (all of ``SchedAttr``).
_FIELDS: Final = tuple(f.name for f in fields(SchedAttr))


def _raw_field(name: str) -> str:
    """The ``struct sched_attr`` field behind ``SchedAttr.<name>``: the kernel's name, without our ``_ns`` unit."""
    return "sched_" + name.removesuffix("_ns")


class SchedError(OSError):
    """A scheduling syscall failed; ``errno`` says how."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)


class AdmissionRefused(SchedError):
    """EBUSY: the kernel's deadline admission test refused the bandwidth."""


class NotPermitted(SchedError):
    """EPERM: no CAP_SYS_NICE, or the task's affinity is narrower than its root domain."""


class InvalidAttributes(SchedError):
    """EINVAL: the parameters break a kernel rule (runtime/deadline/period limits)."""


class NoSuchTask(SchedError):
    """ESRCH: the task is gone."""


class Unsupported(SchedError):
    """ENOSYS: the kernel or machine has no such syscall."""


_BY_ERRNO: Final[dict[int, type[SchedError]]] = {
    errno.EBUSY: AdmissionRefused,
    errno.EPERM: NotPermitted,
    errno.EINVAL: InvalidAttributes,
    errno.ESRCH: NoSuchTask,
    errno.ENOSYS: Unsupported,
}


def error_for(err: int, what: str) -> SchedError:
    """The typed exception for ``err``, with a message naming ``what`` failed."""
    cls = _BY_ERRNO.get(err, SchedError)
    return cls(err, f"{what}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")


def _syscall_numbers() -> tuple[int, int]:
    machine = platform.machine().lower()
    if machine not in _SYSCALLS:
        raise Unsupported(errno.ENOSYS, f"sched_setattr: unknown syscall number on {machine}")
    return _SYSCALLS[machine]


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def sched_setattr(pid: int, attr: SchedAttr) -> None:
    """Set ``pid``'s (a thread id; 0 = the caller) scheduling attributes."""
    nr_set, _ = _syscall_numbers()
    raw = _SchedAttr(size=SCHED_ATTR_SIZE, **{_raw_field(f): getattr(attr, f) for f in _FIELDS})
    if _syscall(nr_set, ctypes.c_int(pid), ctypes.byref(raw), ctypes.c_uint(0)) != 0:
        what = f"sched_setattr(pid {pid}, {attr.policy_name}"
        if attr.is_deadline:
            what += f" runtime={attr.runtime_ns} deadline={attr.deadline_ns} period={attr.period_ns}"
        raise error_for(ctypes.get_errno(), what + ")")


def sched_getattr(pid: int) -> SchedAttr:
    """``pid``'s scheduling attributes (the parameters set, not the running budget).

    For a SCHED_OTHER task ``runtime_ns`` need not be 0: kernels with EEVDF's
    custom slices report the task's slice there (measured on 6.18: 1400000 after :func:`set_other`),
    and a non-zero ``runtime_ns`` given back to :func:`sched_setattr` asks for
    that slice as a custom one. Compare ``policy``, not whole attributes.
    """
    _, nr_get = _syscall_numbers()
    raw = _SchedAttr()
    if _syscall(nr_get, ctypes.c_int(pid), ctypes.byref(raw), ctypes.c_uint(SCHED_ATTR_SIZE), ctypes.c_uint(0)) != 0:
        raise error_for(ctypes.get_errno(), f"sched_getattr(pid {pid})")
    return SchedAttr(**{f: getattr(raw, _raw_field(f)) for f in _FIELDS})


def set_other(pid: int) -> None:
    """Return ``pid`` to SCHED_OTHER (its deadline bandwidth is released)."""
    sched_setattr(pid, OTHER)


def set_affinity(pid: int, cpus: Iterable[int]) -> None:
    """Confine ``pid`` to ``cpus``; errors are typed like the others."""
    try:
        os.sched_setaffinity(pid, set(cpus))
    except OSError as err:
        raise error_for(err.errno or errno.EINVAL, f"sched_setaffinity(pid {pid}, {sorted(cpus)})") from None


def get_affinity(pid: int) -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(pid))
    except OSError as err:
        raise error_for(err.errno or errno.EINVAL, f"sched_getaffinity(pid {pid})") from None


def read_proc_sched(pid: int, tid: int | None = None) -> dict[str, str]:
    """``/proc/<pid>[/task/<tid>]/sched`` as ``{field: value}``.

    On 6.x kernels it shows ``policy`` and, for deadline tasks, ``dl.runtime``
    and ``dl.deadline`` - the *current* budget and absolute deadline, not the
    parameters (use :func:`sched_getattr` for those).
    """
    path = f"/proc/{pid}/sched" if tid is None else f"/proc/{pid}/task/{tid}/sched"
    fields: dict[str, str] = {}
    with open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            key, sep, value = line.partition(":")
            if sep and key.strip() and not key.startswith("-"):
                fields[key.strip()] = value.strip()
    return fields


def policy_from_proc(pid: int, tid: int | None = None) -> int:
    return int(read_proc_sched(pid, tid)["policy"])


def threads_of(pid: int) -> list[int]:
    """The thread ids of process ``pid`` (empty if it is gone)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return []


def deadline_supported() -> bool:
    """Whether this machine has the syscalls (querying ourselves must work)."""
    try:
        sched_getattr(0)
    except SchedError:
        return False
    return True
