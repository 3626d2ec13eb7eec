"""The agent's configuration: command-line flags, with ``RTDRA_AGENT_*`` environment defaults.

Variables are read by the services' common rules (``rtdra.settings``:
booleans as true/false, errors naming the variable); a bad value ends the
agent with one line and exit status 2.

Read once at start-up into a frozen :class:`AgentConfig`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from agent.backends import registry as backends
from agent.kubelet import DEVICE_PLUGIN_DEVICES, DEVICE_PLUGIN_DIR, KUBELET_ROOT
from rtdra import names
from rtdra.bandwidth import BW_UNIT
from rtdra.host import parse_cpulist
from rtdra.settings import ArgumentParser, ConfigError, Env, fail, non_negative_int, positive_int

ENV_PREFIX = "RTDRA_AGENT_"
#: One of ``agent.backends.registry.NAMES``.
BackendName = str
#: How the agent hears of container starts: NRI (the runtime's plugin socket), the CDI hook, or
#: NRI where the socket exists at start-up and the hook elsewhere; or DRA (``agent.dra``): the node's
#: CPUs are ResourceSlice devices, kubelet prepares claims through the agent's DRA plugin and the
#: claims' CDI devices carry the hook.
ModeName = Literal["auto", "nri", "cdi", "dra"]
MODES: Final = ("auto", "nri", "cdi", "dra")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_name: str
    backend: BackendName
    kubeconfig: str | None
    namespace: str
    cdi_dir: Path
    state_dir: Path
    nas_file: Path | None
    rt_cpus: tuple[int, ...] | None
    partitioned: bool
    partition_name: str
    fail_open: bool
    reconcile_interval_s: float
    release_on_exit: bool
    write_cdi: bool
    #: Where the hook is installed for the host to run (a hostPath at the same path in the pod).
    hook_dir: Path
    #: The *host's* interpreter the CDI spec runs the hook with (absolute, as OCI requires).
    hook_python: str
    #: Simulated nodes (backend ``none``): publish this many CPUs instead of this host's.
    sim_cpus: int | None = None
    #: Backend ``none``: publish this per-CPU capacity (kernel fixed point, 1<<20 = one CPU) instead of measuring.
    capacity: int | None = None
    mode: ModeName = "auto"
    nri_socket: Path = Path("/var/run/nri/nri.sock")
    #: kubelet's device-plugin directory (``agent.deviceplugin``); ``None``: no device plugin.
    device_plugin_dir: Path | None = None
    #: Slots of ``rt.resource.example.com/dl`` the device plugin advertises (RT containers at once).
    device_plugin_devices: int = DEVICE_PLUGIN_DEVICES
    #: How often the agent renews its Lease, the heartbeat the extender trusts (``rtdra.leases``).
    lease_renew_interval_s: float = 10.0
    #: kubelet's ``--root-dir`` (DRA mode: ``plugins_registry/`` and ``plugins/<driver>/`` under it).
    kubelet_root: Path = KUBELET_ROOT
    #: Hold a PM QoS CPU wake-up latency bound of this many µs while running (``agent.latency``); ``None``: none.
    cpu_latency_us: int | None = None

    @property
    def dra_state_file(self) -> Path:
        return self.state_dir / "dra-claims.json"

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "agent.sock"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "prepared.json"

    @property
    def partition_record(self) -> Path:
        return self.state_dir / "partitions.json"


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> AgentConfig:
    """The configuration; a bad flag or ``RTDRA_AGENT_*`` value exits with one line and status 2."""
    try:
        return _parse(argv, Env(ENV_PREFIX, env), env)
    except ConfigError as err:
        fail("rtdra-agent", str(err))


def _parse(argv: Sequence[str] | None, e: Env, env: Mapping[str, str]) -> AgentConfig:
    node_name = e.text("NODE_NAME") or env.get("NODE_NAME")
    p = ArgumentParser(prog="rtdra-agent", description="RT-DRA node agent")
    p.add_argument("--node-name", default=node_name, required=not node_name)
    p.add_argument("--backend", choices=backends.NAMES, default=e.text("BACKEND", backends.NAMES[0]))
    p.add_argument("--kubeconfig", default=e.text("KUBECONFIG"))
    p.add_argument("--namespace", default=e.text("NAMESPACE", names.DEFAULT_NAMESPACE))
    p.add_argument("--cdi-dir", type=Path, default=Path(e.text("CDI_DIR", "/var/run/cdi") or "/var/run/cdi"))
    p.add_argument("--state-dir", type=Path, default=e.text("STATE_DIR"), help="default /var/run/rt-dra/<node>")
    p.add_argument(
        "--nas-file", type=Path, default=e.text("NAS_FILE"), help="keep the NAS in this JSON file instead of the API"
    )
    p.add_argument(
        "--rt-cpus", default=e.text("RT_CPUS"), help="the real-time CPU pool, e.g. 1-3 (default: all online)"
    )
    p.add_argument("--partitioned", action="store_true", default=e.flag("PARTITIONED", False))
    p.add_argument("--partition-name", default=e.text("PARTITION_NAME", "rtdra"))
    p.add_argument("--fail-open", action="store_true", default=e.flag("FAIL_OPEN", False))
    p.add_argument("--reconcile-interval", type=float, default=e.number("RECONCILE_INTERVAL", 2.0, positive=True))
    p.add_argument("--release-on-exit", action="store_true", default=e.flag("RELEASE_ON_EXIT", False))
    p.add_argument("--no-cdi", action="store_true", default=e.flag("NO_CDI", False))
    p.add_argument(
        "--hook-dir",
        type=Path,
        default=e.text("HOOK_DIR"),
        help="install the OCI hook here, a directory the host can read at the same path (default: the state dir)",
    )
    p.add_argument(
        "--hook-python",
        default=e.text("HOOK_PYTHON", sys.executable),
        help="the host's Python 3.6+ that runs the hook, an absolute path on the host (default: this interpreter)",
    )
    p.add_argument(
        "--cpus",
        type=positive_int,
        default=e.parsed("CPUS", positive_int, None),
        help="backend none: simulate a node with this many CPUs (default: this host's)",
    )
    p.add_argument(
        "--capacity",
        type=positive_int,
        default=e.parsed("CAPACITY", positive_int, None),
        help="backend none: each CPU's capacity in the kernel's fixed point (1048576 = a whole CPU); "
        "default: measured on this host",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default=e.text("MODE", "auto"),
        help="hear of container starts from the runtime over NRI, or from the CDI hook; "
        "auto: NRI if --nri-socket exists at start-up, else the hook; dra: publish the CPUs as "
        "ResourceSlice devices and prepare ResourceClaims as kubelet's DRA plugin (default: auto)",
    )
    p.add_argument(
        "--kubelet-root-dir",
        default=e.text("KUBELET_ROOT_DIR", str(KUBELET_ROOT)),
        help=f"kubelet's --root-dir, for the DRA plugin's sockets (default {KUBELET_ROOT})",
    )
    p.add_argument("--nri-socket", type=Path, default=Path(e.text("NRI_SOCKET", "/var/run/nri/nri.sock") or ""))
    # The device plugin (how the CDI device reaches containers through kubelet, docs/agent.md).
    p.add_argument(
        "--device-plugin-dir",
        default=e.text("DEVICE_PLUGIN_DIR"),
        help=f"kubelet's device-plugin directory (default {DEVICE_PLUGIN_DIR}; backend none: off); empty: off",
    )
    p.add_argument("--no-device-plugin", action="store_true", default=e.flag("NO_DEVICE_PLUGIN", False))
    p.add_argument(
        "--device-plugin-devices",
        type=positive_int,
        default=e.parsed("DEVICE_PLUGIN_DEVICES", positive_int, DEVICE_PLUGIN_DEVICES),
    )
    p.add_argument(
        "--lease-renew-interval",
        type=float,
        default=e.number("LEASE_RENEW_INTERVAL", 10.0, positive=True),
        help="renew the agent's Lease rtdra-agent-<node> this often, in seconds (default 10; "
        "the extender's --agent-lease-seconds must be well above it)",
    )
    p.add_argument(
        "--cpu-latency-us",
        type=non_negative_int,
        default=e.parsed("CPU_LATENCY_US", non_negative_int, None),
        help="while running, ask the kernel to keep every CPU able to wake within this many microseconds "
        "(/dev/cpu_dma_latency; 0: CPUs poll and never halt, the lowest timer latency, the most power); "
        "default: no request",
    )
    a = p.parse_args(argv)
    if a.cpu_latency_us is not None and a.backend == "none":
        p.error("--cpu-latency-us changes how this machine's CPUs idle: it needs a backend that enforces (not none)")
    if a.rt_cpus:
        try:
            rt_cpus = parse_cpulist(a.rt_cpus)
        except ValueError as err:
            p.error(f"--rt-cpus {a.rt_cpus!r}: {err}")
    if a.backend != "none" and (a.cpus is not None or a.capacity is not None):
        p.error("--cpus and --capacity simulate a node: they need --backend none")
    if a.mode not in MODES:  # a value from the environment (argparse checks only flags)
        p.error(f"{e.variable('MODE')}={a.mode!r}: must be one of {', '.join(MODES)}")
    if a.mode == "dra" and (a.nas_file or a.no_cdi):
        p.error("--mode dra reads ResourceClaims from the API and hands out CDI devices: no --nas-file, no --no-cdi")
    if a.capacity is not None and a.capacity > BW_UNIT:
        p.error(f"--capacity {a.capacity} is more than a whole CPU ({BW_UNIT})")
    if not os.path.isabs(a.hook_python):
        p.error(
            f"--hook-python must be an absolute path on the host (no PATH lookup for OCI hooks), not {a.hook_python}"
        )
    state_dir = Path(a.state_dir) if a.state_dir else Path("/var/run/rt-dra") / a.node_name
    device_plugin_dir: Path | None
    if a.no_device_plugin or a.device_plugin_dir == "" or a.mode == "dra":  # DRA: claims, not `dl` slots
        device_plugin_dir = None
    elif a.device_plugin_dir:
        device_plugin_dir = Path(a.device_plugin_dir)
    else:  # not given: kubelet's directory where the agent enforces; simulated nodes and DRA mode: none
        device_plugin_dir = None if a.backend == "none" or a.mode == "dra" else DEVICE_PLUGIN_DIR
    return AgentConfig(
        node_name=a.node_name,
        backend=a.backend,
        kubeconfig=a.kubeconfig,
        namespace=a.namespace,
        cdi_dir=a.cdi_dir,
        state_dir=state_dir,
        nas_file=Path(a.nas_file) if a.nas_file else None,
        rt_cpus=rt_cpus if a.rt_cpus else None,
        partitioned=a.partitioned,
        partition_name=a.partition_name,
        fail_open=a.fail_open,
        reconcile_interval_s=a.reconcile_interval,
        release_on_exit=a.release_on_exit,
        write_cdi=not a.no_cdi,
        hook_dir=Path(a.hook_dir).absolute() if a.hook_dir else state_dir.absolute(),
        hook_python=a.hook_python,
        sim_cpus=int(a.cpus) if a.cpus is not None else None,
        capacity=int(a.capacity) if a.capacity is not None else None,
        mode=a.mode,
        nri_socket=a.nri_socket,
        device_plugin_dir=device_plugin_dir,
        device_plugin_devices=int(a.device_plugin_devices),
        lease_renew_interval_s=a.lease_renew_interval,
        kubelet_root=Path(a.kubelet_root_dir),
        cpu_latency_us=a.cpu_latency_us,
    )
