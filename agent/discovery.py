"""What this node can give: CPUs, deadline capacity, cgroups, backends.

Capacity comes from ``rtdra.host`` (debugfs where readable, else measured by
probing the kernel's admission); in partitioned mode each real-time CPU is its
own root domain and is measured inside its partition. Nothing is assumed.

Simulated nodes (backend ``none``, :func:`simulate`) publish a chosen number
of CPUs, each with a given capacity or, by default, the smallest per-CPU
capacity measured on this host - so a demo or an end-to-end test can run
nodes bigger than the machine, with figures the kernel here would give.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.backends.registry import BACKENDS
from agent.cpuset import Partitions
from rtdra import host, sched


@dataclass(frozen=True, slots=True)
class NodeFacts:
    cpus: tuple[int, ...]
    rt_cpus: tuple[int, ...]
    capacities: dict[int, int]
    root_domain_capacity: int
    source: str
    cgroup: host.CgroupLayout
    backends: tuple[str, ...]
    notes: tuple[str, ...] = ()


def supported_backends(layout: host.CgroupLayout) -> tuple[str, ...]:
    """The backends (``agent.backends.registry``) this node's kernel and cgroups can run."""
    return tuple(name for name, kind in BACKENDS.items() if kind.available(layout))


def simulate(cpus: int | None = None, capacity: int | None = None, rt_cpus: tuple[int, ...] | None = None) -> NodeFacts:
    """Facts of a simulated node (backend ``none``): ``cpus`` CPUs (default: this host's) of ``capacity`` each.

    Without ``capacity``, each CPU gets the smallest per-CPU capacity measured on
    this host (debugfs, else a probe - which needs root and SCHED_DEADLINE); if
    neither works, the RT sysctls' limit, with a note saying so.
    """
    all_cpus = tuple(range(cpus)) if cpus is not None else host.online_cpus()
    pool = tuple(c for c in (rt_cpus or all_cpus) if c in all_cpus)
    layout = host.cgroup_layout()
    notes: list[str] = []
    if capacity is not None:
        per_cpu, source = capacity, "configured (--capacity)"
    else:
        try:
            measured = host.discover_capacity()
            per_cpu, source = min(measured.per_cpu.values()), f"measured on this host ({measured.source})"
            notes += measured.notes
        except (host.HostError, sched.SchedError, OSError) as err:
            per_cpu, source = host.RtSysctls.read().cpu_limit, "sysctl limit (not measured)"
            notes.append(f"could not measure this host's capacity ({err}); publishing the RT sysctls' limit")
    if cpus is not None:
        source += f", simulated {cpus} CPU(s)"
    caps = dict.fromkeys(pool, per_cpu)
    return NodeFacts(all_cpus, pool, caps, per_cpu * len(pool), source, layout, ("none",), tuple(notes))


def discover(rt_cpus: tuple[int, ...] | None = None, partitions: Partitions | None = None) -> NodeFacts:
    """Discover this node's CPUs and measure its deadline capacity (see the module docstring)."""
    cpus = host.online_cpus()
    pool = tuple(c for c in (rt_cpus or cpus) if c in cpus)
    layout = host.cgroup_layout()
    sysctls = host.RtSysctls.read()
    notes: list[str] = []
    if partitions is not None:
        caps = {}
        for cpu in pool:
            measured = host.discover_capacity(
                (cpu,), method="probe", sysctls=sysctls, cpuset_tasks=partitions.tasks_file(cpu)
            )
            caps[cpu] = measured.root_domain_capacity
            notes += measured.notes
        root, source = sum(caps.values()), "probe (per partition)"
    else:
        measured = host.discover_capacity(cpus, sysctls=sysctls)
        caps = {cpu: measured.per_cpu[cpu] for cpu in pool}
        # The pool shares the root domain with the other CPUs: its part of it.
        root = min(measured.root_domain_capacity, sum(caps.values()))
        source = measured.source
        notes += measured.notes
    return NodeFacts(cpus, pool, caps, root, source, layout, supported_backends(layout), tuple(notes))


def cpu_topology(
    cpus: tuple[int, ...], sysfs: Path = Path("/sys/devices/system")
) -> dict[int, tuple[int | None, int | None]]:
    """Each CPU's core id and NUMA node from sysfs (``None`` where the kernel does not say)."""
    numa: dict[int, int] = {}
    for node_dir in sysfs.glob("node/node[0-9]*"):
        try:
            for cpu in host.parse_cpulist((node_dir / "cpulist").read_text().strip()):
                numa[cpu] = int(node_dir.name[len("node") :])
        except (OSError, ValueError):
            continue
    out: dict[int, tuple[int | None, int | None]] = {}
    for cpu in cpus:
        try:
            core: int | None = int((sysfs / f"cpu/cpu{cpu}/topology/core_id").read_text())
        except (OSError, ValueError):
            core = None
        out[cpu] = (core, numa.get(cpu))
    return out
