"""rtdra-agent: the node agent's entry point.

Start-up: read the configuration, set up the partitions (if configured),
discover the node, load what earlier runs applied, install the OCI hook for
the host (``agent.cdi``), reconcile, publish the NAS as Ready, renew the
agent's Lease (its heartbeat), write the CDI spec, then serve the hook socket
and reconcile (and renew) every interval. SIGTERM/SIGINT: stop serving, publish NotReady; reservations of
running containers stay (a restarted agent picks them up) unless
``--release-on-exit``.

``--mode dra`` (:mod:`agent.dra`): the node serves RT pods through DRA, not the
extender: the NAS stays NotReady (with that reason, so the extender books
nothing here), the CPUs are published as a ResourceSlice pool, kubelet's DRA
plugin is served, and SIGTERM also deletes the pool and stops the plugin.

The Kubernetes client (:mod:`agent.kubeapi`) is imported only when the NAS
lives in the API: it costs ~0.5 s of start-up and most of the agent's memory,
which a ``--nas-file`` agent (tests, simulated nodes, the benchmark) does not need.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent import cdi, hostview
from agent.backends.base import Backend
from agent.backends.registry import BACKENDS
from agent.config import AgentConfig, parse_args
from agent.cpuset import Partitions
from agent.discovery import NodeFacts, cpu_topology, discover, simulate
from agent.dra.claims import ClaimState
from agent.enforce import Enforcer
from agent.events import EventSink, LogEvents
from agent.latency import LatencyRequest
from agent.reconcile import Loop, publish
from agent.server import HookServer
from agent.store import FileStore, LedgerStore
from rtdra import dra, host
from rtdra.settings import fail

if TYPE_CHECKING:
    from agent.deviceplugin import DevicePlugin
    from agent.dra.plugin import DraPlugin

log = logging.getLogger("rtdra-agent")

#: The interpreter's default (5 ms) would let the reconcile thread hold the GIL
#: that long while a hook waits for its answer.
GIL_SWITCH_INTERVAL_S = 0.0005


class StartupError(Exception):
    """The agent cannot start; the message says what it was doing and why, in one line."""


@contextlib.contextmanager
def starting(what: str) -> Iterator[None]:
    """Turn any failure of a start-up step into a :class:`StartupError` naming the step."""
    try:
        yield
    except StartupError:
        raise
    except Exception as err:
        raise StartupError(f"{what}: {err}") from err


def build_backend(config: AgentConfig, facts: NodeFacts, partitions: Partitions | None) -> Backend:
    """The configured backend (``agent.backends.registry``), if this node supports it."""
    kind = BACKENDS[config.backend]
    if kind.name not in facts.backends:
        raise StartupError(kind.unavailable)
    return kind.build(facts.cpus, facts.cgroup, partitions)


def install_hook(config: AgentConfig) -> list[str]:
    """Check the host's interpreter, install the hook for the host; returns the hook's argv.

    Done before the NAS is first published: a node whose hook cannot run would
    refuse every real-time container it is given.
    """
    try:
        note = hostview.check_host_executable(config.hook_python, "--hook-python")
        installed = cdi.install_hook(config.hook_dir)
    except (hostview.HostPathError, cdi.HookDirError, OSError) as err:
        raise StartupError(f"cannot install the OCI hook: {err}") from None
    if note:
        log.warning("%s", note)
    log.info("hook %s, run by the host's %s", installed, config.hook_python)
    return cdi.hook_command(
        config.socket_path, hook_dir=config.hook_dir, python=config.hook_python, fail_open=config.fail_open
    )


def start_nri(config: AgentConfig, enforcer: Enforcer) -> threading.Event | None:
    """Connect to the runtime over NRI if the mode says so; the event that stops it, or None.

    With NRI the device plugin hands out its slots without the CDI device, so no hook runs; the hook
    socket is served in every mode all the same, so a container that carries the device anyway
    (allocated before a restart in the other mode, or by another injector) gets its answer - an
    idempotent one.
    """
    use_nri = config.mode == "nri" or (config.mode == "auto" and config.nri_socket.is_socket())
    if not use_nri:
        log.info(
            "mode %s: container starts come from the CDI hook (no NRI socket at %s)", config.mode, config.nri_socket
        )
        return None
    from agent.nri.plugin import RtPlugin  # noqa: PLC0415 - protobuf only when NRI is used
    from agent.nri.stub import Stub  # noqa: PLC0415

    log.info("mode %s: container starts come from the runtime over NRI at %s", config.mode, config.nri_socket)
    stop = threading.Event()
    stub = Stub(config.nri_socket, RtPlugin(enforcer))
    threading.Thread(target=stub.run, args=(stop,), name="nri", daemon=True).start()
    return stop


def start_device_plugin(config: AgentConfig, *, cdi_device: bool = True) -> DevicePlugin | None:
    """Start the kubelet device plugin (docs/agent.md, "How the CDI device reaches a container"), if configured.

    Started after the hook server: kubelet may allocate, and the runtime run our hooks, as soon as it registers.
    ``cdi_device=False`` (NRI mode): the slots are handed out without the CDI device (and its hooks).
    """
    if config.device_plugin_dir is None:
        return None
    from agent.deviceplugin import DevicePlugin  # noqa: PLC0415 - gRPC only when used

    plugin = DevicePlugin(config.device_plugin_dir, devices=config.device_plugin_devices, cdi_device=cdi_device)
    plugin.start()
    return plugin


#: What a DRA-mode node's NAS says, for the extender's filter (``statusReason``).
DRA_NOT_READY_REASON = (
    f"node serves RT pods through DRA (DeviceClass {dra.DEVICE_CLASS}): "
    "ask for a ResourceClaim of that class instead of the extender"
)


@dataclass
class DraMode:
    """DRA mode's moving parts (:func:`start_dra`)."""

    state: ClaimState
    plugin: DraPlugin | None = None
    slices: Any = None  # agent.dra.slices.SlicePublisher (the Kubernetes client is imported on demand)

    def sync_slices(self) -> None:
        if self.slices is not None:
            try:
                self.slices.sync()
            except Exception as err:  # the API may be away for a while: next interval
                log.warning("publishing the ResourceSlices failed: %s", err)


def start_dra(config: AgentConfig, facts: NodeFacts, mode: DraMode, enforcer: Enforcer, hook_argv: list[str]) -> None:
    """Publish the pool and serve the kubelet DRA plugin (after the hook server: kubelet may prepare at once)."""
    from agent import kubeapi  # noqa: PLC0415 - gRPC and the Kubernetes client only in DRA mode
    from agent.dra.plugin import DraPlugin  # noqa: PLC0415
    from agent.dra.prepare import Preparer  # noqa: PLC0415
    from agent.dra.slices import SlicePublisher  # noqa: PLC0415

    api = kubeapi.api_client(config.kubeconfig)
    topology = cpu_topology(facts.rt_cpus)

    def devices() -> list[dra.CpuDevice]:
        return [dra.CpuDevice(cpu, cap, *topology.get(cpu, (None, None))) for cpu, cap in facts.capacities.items()]

    mode.slices = SlicePublisher(api, config.node_name, devices)
    with starting(f"publishing the ResourceSlices of node {config.node_name}"):
        mode.slices.sync()
    preparer = Preparer(
        mode.state,
        kubeapi.ClaimReader(api),
        pool=config.node_name,
        capacities=facts.capacities,
        cdi_dir=config.cdi_dir,
        hook_argv=hook_argv,
        release_claim=enforcer.release_claim,
    )
    mode.plugin = DraPlugin(preparer, kubelet_root=config.kubelet_root)
    with starting(f"serving the kubelet DRA plugin under {config.kubelet_root}"):
        mode.plugin.start()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent; a failure to start is one line on stderr and exit status 2 (what was undone is undone)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    try:
        return _main(config)
    except StartupError as err:
        fail("rtdra-agent", str(err))


def _main(config: AgentConfig) -> int:
    with starting(f"creating the state directory {config.state_dir}"):
        config.state_dir.mkdir(parents=True, exist_ok=True)
    store: LedgerStore
    events: EventSink
    heartbeat: Callable[[], None] | None = None
    if config.nas_file is not None:
        store, events = FileStore(config.node_name, config.nas_file, config.namespace), LogEvents()
    else:
        with starting("connecting to the Kubernetes API"):
            from agent import kubeapi  # noqa: PLC0415 - the Kubernetes client only when used (see above)

            client = kubeapi.api_client(config.kubeconfig)
            store = kubeapi.ApiStore(config.node_name, kubeapi.NasStore(client, config.namespace))
            events = kubeapi.ApiEvents(client, config.node_name)
            lease = kubeapi.LeaseRenewer(
                client, config.namespace, config.node_name, duration_s=4 * config.lease_renew_interval_s
            )
            heartbeat = lease.renew

    latency: LatencyRequest | None = None
    if config.cpu_latency_us is not None:
        latency = LatencyRequest(config.cpu_latency_us)
        with starting(f"asking for a CPU wake-up latency of at most {config.cpu_latency_us} us"):
            latency.hold()
        log.info(
            "holding a CPU wake-up latency bound of %d us (%s) while running", config.cpu_latency_us, latency.device
        )
    try:
        return _main_partitioned(config, store, events, heartbeat)
    finally:
        if latency is not None:
            latency.close()


def _main_partitioned(
    config: AgentConfig, store: LedgerStore, events: EventSink, heartbeat: Callable[[], None] | None
) -> int:
    partitions: Partitions | None = None
    if config.partitioned and config.backend == "deadline":
        mount = host.cgroup_layout().v1_mount("cpuset")
        if mount is None:
            raise StartupError("--partitioned needs the cgroup v1 cpuset controller")
        pool = config.rt_cpus or host.online_cpus()
        partitions = Partitions(mount, config.partition_name, pool, config.partition_record)
        # setup() undoes what it did when it fails (e.g. a sibling cpuset holds one of the CPUs).
        with starting(f"creating the cpuset partitions {mount / config.partition_name}"):
            partitions.setup()
    try:
        return _run(config, store, events, partitions, heartbeat)
    finally:
        if partitions is not None and (config.release_on_exit or not _has_records(config)):
            partitions.teardown()


def _has_records(config: AgentConfig) -> bool:
    try:
        return config.state_file.read_text().strip() not in ("", "{}")
    except FileNotFoundError:
        return False


def _run(
    config: AgentConfig,
    store: LedgerStore,
    events: EventSink,
    partitions: Partitions | None,
    heartbeat: Callable[[], None] | None = None,
) -> int:
    with starting("discovering the node"):
        if config.backend == "none":
            facts = simulate(config.sim_cpus, config.capacity, config.rt_cpus)
        else:
            facts = discover(config.rt_cpus, partitions)
    log.info(
        "node %s: CPUs %s, RT pool %s, capacity %s (root domain %s, %s), cgroup %s, backends %s",
        config.node_name,
        facts.cpus,
        facts.rt_cpus,
        facts.capacities,
        facts.root_domain_capacity,
        facts.source,
        facts.cgroup.version,
        ",".join(facts.backends),
    )
    for note in facts.notes:
        log.info("discovery: %s", note)
    backend = build_backend(config, facts, partitions)
    loop_ref: list[Loop] = []
    dra_mode: DraMode | None = None
    if config.mode == "dra":
        dra_mode = DraMode(ClaimState(config.dra_state_file))
        with starting(f"loading the prepared claims from {config.dra_state_file}"):
            dra_mode.state.load()
    enforcer = Enforcer(
        store,
        backend,
        events,
        config.state_file,
        fail_open=config.fail_open,
        publish=lambda: loop_ref[0].mark_dirty() if loop_ref else None,
        claim_slots=dra_mode.state.slots if dra_mode is not None else None,
    )
    with starting("loading what earlier runs applied"):
        enforcer.load()
    plugin_box: list[DevicePlugin] = []
    # With a device plugin, the node takes RT pods only once kubelet has registered it (docs/agent.md).
    loop = Loop(
        store,
        facts,
        enforcer,
        config.reconcile_interval_s,
        ready=lambda: (
            dra_mode is None and (config.device_plugin_dir is None or any(p.registered.is_set() for p in plugin_box))
        ),
        not_ready_reason=DRA_NOT_READY_REASON if dra_mode is not None else "",
        also=dra_mode.sync_slices if dra_mode is not None else None,
        heartbeat=heartbeat,
        heartbeat_interval_s=config.lease_renew_interval_s,
    )
    loop_ref.append(loop)
    hook_argv = install_hook(config) if config.write_cdi else None
    with starting(f"publishing the NodeAllocationState {config.node_name}"):
        loop.step()
    loop.beat()  # the first heartbeat with the first publication (a failure is retried by the loop)
    if hook_argv is not None:
        with starting(f"writing the CDI spec in {config.cdi_dir}"):
            path = cdi.write_spec(config.cdi_dir, config.node_name, cdi.spec(config.node_name, hook_argv))
        log.info("CDI spec %s: hooks run %s", path, hook_argv)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    server = HookServer(config.socket_path, enforcer)
    with starting(f"serving hooks on {config.socket_path}"):
        server.start()
    log.info("serving hooks on %s", config.socket_path)
    nri_stop = start_nri(config, enforcer) if dra_mode is None else None
    if dra_mode is not None:
        assert hook_argv is not None  # --mode dra refuses --no-cdi
        start_dra(config, facts, dra_mode, enforcer, hook_argv)
    plugin = start_device_plugin(config, cdi_device=nri_stop is None)
    if plugin is not None:
        plugin_box.append(plugin)
        log.info("NAS %s stays NotReady until kubelet registers the device plugin", config.node_name)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        loop.stopping.set()
        loop.mark_dirty()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = threading.Thread(target=loop.run, name="reconcile", daemon=True)
    worker.start()
    stop.wait()
    if nri_stop is not None:
        nri_stop.set()
    if plugin is not None:
        plugin.stop()
    if dra_mode is not None and dra_mode.plugin is not None:
        dra_mode.plugin.stop()
    server.stop()
    worker.join(timeout=10)
    if config.release_on_exit:
        enforcer.release_all()
    publish(store, facts, enforcer, ready=False, reason=loop.not_ready_reason)
    if dra_mode is not None and dra_mode.slices is not None:
        try:
            dra_mode.slices.delete()
        except Exception as err:
            log.warning("deleting the ResourceSlices failed: %s", err)
    log.info("stopped; NAS %s marked NotReady", config.node_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
