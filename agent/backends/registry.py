"""Every backend the agent has, by name: what ``--backend`` accepts, how a node is probed for it, how it is built.

Adding a backend is one entry in :data:`BACKENDS`: the command line's
choices (``agent.config``), discovery's list of what this node supports
(``agent.discovery.supported_backends``) and the agent's start-up
(``agent.cli``) all derive from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agent.backends.base import Backend
from agent.backends.deadline import DeadlineBackend
from agent.backends.hcbs import MULTI_RUNTIME, RT_MAX, HcbsBackend
from agent.backends.none import NoneBackend
from agent.cpuset import Partitions
from rtdra import host, sched


@dataclass(frozen=True, slots=True)
class BackendKind:
    """One backend: whether a node can run it, and how to build it there."""

    name: str
    #: Whether this node's kernel and cgroups support it.
    available: Callable[[host.CgroupLayout], bool]
    #: Why not, for the one line the agent exits with.
    unavailable: str
    #: The backend for a node with these root-domain CPUs, cgroups and (deadline only) partitions.
    build: Callable[[Sequence[int], host.CgroupLayout, Partitions | None], Backend]


def _hcbs_v1(layout: host.CgroupLayout) -> Path | None:
    cpu_v1 = layout.v1_mount("cpu")
    return cpu_v1 if cpu_v1 is not None and (cpu_v1 / MULTI_RUNTIME).exists() else None


def _hcbs_available(layout: host.CgroupLayout) -> bool:
    return _hcbs_v1(layout) is not None or bool(layout.unified and (Path(layout.unified) / RT_MAX).exists())


def _hcbs(cpus: Sequence[int], layout: host.CgroupLayout, partitions: Partitions | None) -> Backend:
    v1 = _hcbs_v1(layout)
    return HcbsBackend(v1, "v1") if v1 is not None else HcbsBackend(Path(layout.unified or "/sys/fs/cgroup"), "v2")


BACKENDS: Final[dict[str, BackendKind]] = {
    kind.name: kind
    for kind in (
        BackendKind(
            "deadline",
            lambda layout: sched.deadline_supported(),
            "this kernel has no SCHED_DEADLINE (sched_setattr failed)",
            lambda cpus, layout, partitions: DeadlineBackend(cpus, partitions),
        ),
        BackendKind(
            "hcbs",
            _hcbs_available,
            f"--backend hcbs needs a kernel with the HCBS patch (no {MULTI_RUNTIME} / {RT_MAX})",
            _hcbs,
        ),
        BackendKind("none", lambda layout: True, "", lambda cpus, layout, partitions: NoneBackend()),
    )
}

#: What ``--backend`` accepts, the default first.
NAMES: Final = tuple(BACKENDS)
