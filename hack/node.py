"""A real Kubernetes node on this machine: upstream kubelet + containerd + runc, joined to a ControlPlane.

Where :mod:`hack.nodesim` only pretends, this runs the real thing: kubelet
v1.37 (the control plane's version), containerd 2.x with runc, built from
their Go modules by ``hack/node/build.sh`` (:mod:`hack.nodebins`), and an
image made here from host files (:mod:`hack.images`; no registry), which is
also the pod sandbox (pause) image. RT-DRA's agent runs beside it as a local
process: a kubelet device plugin for ``rt.resource.example.com/dl`` whose
``Allocate`` hands kubelet the CDI device, and the OCI hook that device adds.

What it does to the host, all recorded first in :class:`hack.hostchanges.HostChanges`
and undone by :meth:`RealNode.stop` (or, after a crash, by the next start):

- kubelet's six sysctls (it sets them at start-up; restored afterwards);
- ``/var/lib/kubelet/device-plugins`` - the device-plugin directory is
  hard-coded in kubelet (``pluginapi.DevicePluginPath``), so only one real
  node runs on a machine at a time (a file lock says so) - and
  ``/var/log/containers`` (hard-coded too); everything else (root dir, pod
  logs, certificates, containerd's root and state) lives in the work dir -
  but for a node given its own ``root_dir`` (the DRA-mode node: its plugin
  sockets live under it and a unix socket's path has at most 107 bytes),
  which is created, and removed with what is mounted below it;
- a ``cgroupRoot`` (``/rtdra-node``) in every cgroup hierarchy (on cgroup v1,
  kubelet needs it to exist already, with ``cpuset.cpus``/``cpuset.mems``);
- mounts under the work dir (kubelet bind-mounts its root dir onto itself;
  containerd's overlay, shm and network-namespace mounts).

Loopback only: kubelet serves on 127.0.0.1 (its API, healthz) and talks to the
API server on 127.0.0.1; pods that are not ``hostNetwork`` get an ``eth0`` that is a
dummy link inside their own network namespace (see :mod:`hack.runtime`). kubelet
refuses a loopback ``--node-ip``, so the Node object lists the machine's own
address; nothing here ever dials it (no ``kubectl logs``/``exec``: tests read
the log files kubelet writes, :meth:`RealNode.container_log`).

Facts learnt running it here:

- kubelet ≥ 1.35 refuses cgroup v1 unless ``failCgroupV1: false``;
- with ``protectKernelDefaults: false`` kubelet *changes* the sysctls above,
  with ``true`` it refuses to start when they differ - so they are recorded and
  restored instead;
- the ServiceAccount admission plugin is off on the test control plane, so
  pods get no token volume and kubelet needs no ServiceAccount tokens;
- this kernel has no dummy network driver: pods' ``eth0`` is a tap device in
  their own network namespace (``hack/runtime.py``);
- the CDI ``createRuntime`` hook runs while the container's process is still
  runc's init (a Go program with helper threads), and everything runc does
  after it (pivot, mounts, wait for start, exec) runs under the container's
  reservation: with a small one the pod starts measurably later
  (``bench/bench_node.py``); the NRI path reserves at StartContainer instead.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from hack.cluster import ControlPlane
from hack.hostchanges import RECORD_DIR, HostChanges, unmount_all
from hack.images import ImageInfo, build_image
from hack.nodebins import NodeBinaries, ensure_node_binaries
from hack.pki import write_kubeconfig
from hack.procs import free_port, kill, spawn, tail
from hack.runtime import Containerd

log = logging.getLogger(__name__)

#: kubelet's hard-coded device-plugin directory (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1.DevicePluginPath).
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
#: Where kubelet links every container's log (hard-coded in kubelet).
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CGROUP_ROOT = "rtdra-node"
#: The sysctls kubelet sets at start (setupKernelTunables, pkg/kubelet/cm/container_manager_linux.go).
KUBELET_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
NODE_LOCK = RECORD_DIR / "node.lock"


class NodeError(RuntimeError):
    """The real node could not start or stop; the message has the log tail."""


class RealNode:
    """kubelet + containerd + runc on this machine, registered as ``name`` with the control plane ``cp``."""

    def __init__(
        self,
        cp: ControlPlane,
        name: str,
        workdir: Path,
        *,
        binaries: NodeBinaries | None = None,
        image: ImageInfo | None = None,
        progress: Callable[[str], None] = lambda _m: None,
        detach: bool = False,
        root_dir: Path | None = None,
    ) -> None:
        self.cp = cp
        self.name = name
        self.workdir = Path(workdir).resolve()
        self.binaries = binaries
        self.image = image
        self.progress = progress
        self.detach = detach
        self.logs = self.workdir / "logs"
        #: kubelet's --root-dir: in the work dir, or ``root_dir`` - a short path outside it, for plugins whose
        #: sockets live under it (the DRA plugin's ``plugins_registry/<driver>-reg.sock``): a unix socket's
        #: path has at most 107 bytes, which a temporary work dir's nesting leaves no room for.
        self.own_root_dir = root_dir is not None
        self.root_dir = Path(root_dir) if root_dir is not None else self.workdir / "kubelet"
        self.pod_logs = self.workdir / "pod-logs"
        self.cdi_dir = self.workdir / "cdi"
        self.device_plugin_dir = DEVICE_PLUGIN_DIR
        self.containerd: Containerd | None = None
        self.kubelet: subprocess.Popen[bytes] | None = None
        self.changes: HostChanges | None = None
        self._lock: Any = None
        self.ports: dict[str, int] = {}

    # -- life cycle ---------------------------------------------------------------

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> RealNode:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = open(NODE_LOCK, "a+")  # noqa: SIM115 - held until stop()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise NodeError(
                f"another real node runs on this machine ({NODE_LOCK} is locked): kubelet's device-plugin "
                f"directory {DEVICE_PLUGIN_DIR} is fixed, so only one can"
            ) from None
        self.changes = HostChanges.open(f"node-{os.getpid()}")
        if self.binaries is None:
            self.progress("building (or reusing) kubelet, containerd, runc, crictl and the CNI plugins")
            self.binaries = ensure_node_binaries()
        if self.image is None:
            self.image = build_image()
        changes = self.changes
        if self.own_root_dir:
            if self.root_dir.exists():  # left by a crashed run (we hold the node lock: no kubelet uses it)
                unmount_all([self.root_dir])
                shutil.rmtree(self.root_dir)
            changes.directory(self.root_dir)
            changes.mounts_under(self.root_dir)
        for d in (self.workdir, self.logs, self.root_dir, self.pod_logs, self.cdi_dir):
            d.mkdir(parents=True, exist_ok=True)
        changes.processes_matching(str(self.workdir))
        changes.mounts_under(self.workdir)
        changes.directory(DEVICE_PLUGIN_DIR)
        changes.directory(CONTAINER_LOG_LINKS)
        changes.files_appearing_in(CONTAINER_LOG_LINKS)
        for name in KUBELET_SYSCTLS:
            changes.sysctl_will_change(name)
        changes.cgroup(CGROUP_ROOT)

        self.progress("starting containerd (own root, state and sockets; NRI on; CDI specs from the agent)")
        self.containerd = Containerd(
            self.workdir / "containerd", self.binaries, cdi_spec_dirs=[self.cdi_dir], image=self.image
        ).start()
        self.progress(f"starting kubelet as node {self.name}")
        self._start_kubelet()
        self.wait_ready()

    def stop(self) -> None:
        """Stop kubelet, then every pod (so OCI ``poststop`` hooks run), then containerd; undo the host changes."""
        if self.kubelet is not None:
            kill(self.kubelet.pid, self.kubelet, grace=10)
            self.kubelet = None
        if self.containerd is not None:
            self.containerd.stop()  # removes every pod first: their poststop hooks release the reservations
            self.containerd = None
        if self.changes is not None:
            self.changes.undo()
            self.changes = None
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        if not os.environ.get("RTDRA_KEEP_CLUSTER"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- kubelet --------------------------------------------------------------------

    def _write_identity(self) -> Path:
        """A node client certificate (``system:node:<name>`` in ``system:nodes``) from the cluster CA."""
        cert, key = self.cp.ca.issue(f"system:node:{self.name}", ["system:nodes"], client=True)
        return write_kubeconfig(
            self.workdir / "kubelet.kubeconfig",
            self.cp.server,
            self.cp.ca.cert_pem,
            f"system:node:{self.name}",
            cert_pem=cert,
            key_pem=key,
        )

    def kubelet_config(self) -> dict[str, Any]:
        assert self.containerd is not None
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": self.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports["healthz"],
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cp.ca_file)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.containerd.socket}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failCgroupV1": False,
            "failSwapOn": False,
            "podLogsDir": str(self.pod_logs),
            "protectKernelDefaults": False,
            "serializeImagePulls": False,
            # Throw-away node on a shared disk: no evictions for a disk that is a few percent full.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "shutdownGracePeriod": "0s",
            "registerNode": True,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
        }

    def _start_kubelet(self, ports: dict[str, int] | None = None) -> None:
        assert self.binaries is not None
        self.ports = ports or {"kubelet": free_port(), "healthz": free_port()}
        kubeconfig = self._write_identity()
        config = self.workdir / "kubelet-config.yaml"
        config.write_text(yaml.safe_dump(self.kubelet_config(), sort_keys=False))
        self.kubelet = spawn(
            [
                str(self.binaries.kubelet),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.root_dir}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                f"--hostname-override={self.name}",
                "--v=2",
            ],
            self.logs / "kubelet.log",
            detach=self.detach,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = "not registered"
        with self.cp.api_client() as api:
            core = client.CoreV1Api(api)
            while time.monotonic() < deadline:
                if self.kubelet is not None and self.kubelet.poll() is not None:
                    raise NodeError(f"kubelet exited ({self.kubelet.returncode}):\n{tail(self.logs / 'kubelet.log')}")
                try:
                    node = core.read_node(self.name)
                except ApiException as err:
                    if err.status != 404:
                        raise
                else:
                    ready = [c for c in node.status.conditions or [] if c.type == "Ready"]
                    if ready and ready[0].status == "True":
                        return
                    last = ready[0].message if ready else "no Ready condition"
                time.sleep(0.5)
        raise NodeError(f"node {self.name} not Ready after {timeout:.0f}s ({last}):\n{tail(self.logs / 'kubelet.log')}")

    def restart_kubelet(self) -> None:
        """Stop kubelet and start it again (same ports, same identity); containers keep running meanwhile."""
        if self.kubelet is not None:
            kill(self.kubelet.pid, self.kubelet, grace=10)
        self._start_kubelet(self.ports)
        self.wait_ready()

    # -- looking at containers ----------------------------------------------------------

    def container_pid(self, pod: client.V1Pod, container: str) -> int | None:
        """The host pid of ``container``'s first process (from containerd), or None if it runs not."""
        assert self.containerd is not None
        for status in pod.status.container_statuses or []:
            if status.name == container and status.container_id and status.state and status.state.running:
                info = json.loads(self.containerd.crictl("inspect", status.container_id.split("://", 1)[-1]))
                pid = int((info.get("info") or {}).get("pid") or 0)
                return pid or None
        return None

    def container_log(self, pod: client.V1Pod, container: str) -> str:
        """What the container wrote, from the log file kubelet keeps (no API round trip to the kubelet)."""
        base = self.pod_logs / f"{pod.metadata.namespace}_{pod.metadata.name}_{pod.metadata.uid}" / container
        texts = []
        for path in sorted(base.glob("*.log"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0):
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split(" ", 3)  # CRI log format: <time> <stream> <P|F> <text>
                texts.append(parts[3] if len(parts) == 4 else line)
        return "\n".join(texts)
