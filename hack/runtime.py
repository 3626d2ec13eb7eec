"""containerd for the tests: a private instance whose every trace lives in one work dir.

``Containerd(workdir, cdi_spec_dirs=[...]).start()`` runs the upstream containerd
(``hack/nodebins.py``) with its own root, state, temp, runc root, shim-socket dir,
gRPC/ttrpc sockets, NRI socket and CNI configuration, imports the node image
(``hack/images.py``: ``rt-dra.local/node-base:1``, pinned as the sandbox image)
and waits until the CRI reports RuntimeReady and NetworkReady. ``stop()`` removes
the pods, kills containerd, every shim and container process it started, unmounts
everything under its dirs (overlay rootfs, netns bind mounts, sandbox shm) and
deletes its dirs and cgroups. ``crictl(...)``/``ctr(...)`` drive it.

Configuration (containerd 2.4 config ``version = 4``) and why:

- Server sockets are the ``io.containerd.server.v1.grpc`` / ``.ttrpc`` plugins'
  ``address``; a top-level ``[grpc]`` table is only migrated from older versions.
  **In version 4 the ttrpc server does not follow the gRPC address**: without its own
  ``address`` it binds ``/run/containerd/containerd.sock.ttrpc`` (a system
  containerd's socket), so both are set.
- Shim sockets: ``io.containerd.shim.v1.manager.socket_dir``. containerd refuses a
  dir longer than 42 characters (a unix socket path is at most 108 bytes and the
  socket name is a 64-hex hash), so ``<workdir>/s`` is used when short enough,
  else ``/run/rt-dra-node/s-<token>``.
- CDI is always on in containerd 2: only ``cdi_spec_dirs`` is set (given).
- NRI is on, its socket in the work dir, no plugin dirs outside it.
- ``restrict_oom_score_adj = true``: a sandbox without CAP_SYS_RESOURCE (e.g. a
  container-based CI machine) cannot lower the pause process's ``oom_score_adj`` to
  -998; runc then fails with "can't get final child's PID from pipe: EOF".
- ``disable_apparmor = true``, ``netns_mounts_under_state_dir = true`` (netns bind
  mounts under our state dir, not ``/var/run/netns``), runc ``BinaryName``/``Root``
  (the built runc, its state in the work dir), ``SystemdCgroup = false``
  (cgroupfs: works without systemd), snapshotter ``overlayfs``.
- ``io.containerd.internal.v1.opt`` would otherwise create ``/opt/containerd``.
- The CRI streaming server (exec/attach/port-forward) listens on 127.0.0.1 only.

Network. Ordinary (non-hostNetwork) pods need a CNI result with an ``eth0`` that
has an IP: containerd's CRI refuses the sandbox otherwise ("failed to find network
info for sandbox"). The CNI ``dummy`` plugin creates ``eth0`` as a *dummy* link
inside the pod's own network namespace, addressed by ``host-local`` IPAM (its
dataDir in the work dir), with no routes: the pod is connected to nothing and no
host-side interface exists (``loopback`` brings up the pod's ``lo``). **Some kernels
have no dummy driver** (e.g. Firecracker guest kernels built without
``CONFIG_DUMMY``; the plugin then fails with "failed to create dummy: operation not
supported"). There the CNI ``tap`` plugin is used instead (``pod_link_plugin()``):
a persistent tap device created directly inside the pod's netns with no process
attached to it and no bridge - just as unconnected (NO-CARRIER), same IPAM, no
routes. Addresses come from ``POD_CIDR`` = ``198.18.0.0/24``, inside
``198.18.0.0/15``, the range RFC 2544/RFC 6815 reserve for benchmarking network
devices: not a private range any LAN uses (10/8, 172.16/12, 192.168/16), not routed
on the Internet, so an address leaking into a log or a probe can never reach a real
machine. Never dial pod IPs from the host anyway.

Host changes and crash recovery. Each instance writes a record file
``/run/rt-dra-node/<token>.json`` (owner pid and start time, dirs, sockets, cgroup
parent) before starting anything. containerd gets SIGKILL when the Python process
dies (PR_SET_PDEATHSIG), but shims and containers are daemons that survive it; so
``start()`` first cleans every record whose owner is gone: kills the shims that
name its socket and the processes in its cgroups, unmounts everything under its
dirs, removes dirs and cgroups. Pods should use ``cgroup_parent`` (a per-instance
path under every cgroup hierarchy, removed by ``stop()``); pods without one land in
containerd's default ``/k8s.io/<id>``, which is cleaned per container id too.
containerd's CNI library caches each attachment's result in ``/var/lib/cni/results``
(a fixed path: containerd offers no setting for it); a crashed run's files are
removed by sandbox id, and ``/var/lib/cni`` itself when this instance created it
and it is empty again.
Not undone: kernel modules loaded on first use (``overlay``, ``dummy``) stay
loaded, and Debian packages installed by the builds stay installed.

Needs root and Linux. Only stdlib plus the project's hack helpers.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import secrets
import shutil
import subprocess
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hack.hostchanges import kill_cgroup, mounts_under, proc_start_time, unmount_all
from hack.images import ImageInfo, build_image
from hack.nodebins import NodeBinaries, ensure_node_binaries
from hack.procs import kill, pid_alive, spawn, tail

#: Pod addresses (see the module docstring for why this range).
POD_CIDR = "198.18.0.0/24"
#: Where instance records live (one JSON file per running Containerd).
RECORD_DIR = Path("/run/rt-dra-node")
#: libcni's cache (containerd cannot move it); see the module docstring.
CNI_CACHE_DIR = Path("/var/lib/cni")
#: containerd's limit for ``socket_dir`` on Linux (core/runtime/v2/socket_linux.go).
MAX_SHIM_SOCKET_DIR = 42
CRI_NAMESPACE = "k8s.io"


class ContainerdError(RuntimeError):
    """containerd could not be started, driven or stopped; the message has the log tail."""


# --------------------------------------------------------------------------- host helpers
def shim_pids(socket: Path) -> list[int]:
    """containerd-shim processes started for the containerd serving ``socket``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or b"containerd-shim" not in Path(argv[0].decode(errors="replace")).name.encode():
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-address" and argv[i + 1].decode(errors="replace") == str(socket):
                pids.append(int(entry.name))
    return pids


def _kernel_config(option: str) -> str:
    """``y``/``m``/``""`` for a kernel config option, from /proc/config.gz when the kernel has it."""
    with contextlib.suppress(OSError):
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(option + "="):
                    return line.strip().split("=", 1)[1]
        return ""
    return "?"


def pod_link_plugin() -> str:
    """The CNI plugin that gives pods an unconnected ``eth0`` on this kernel: ``dummy`` or ``tap``."""
    if Path("/sys/module/dummy").exists() or _kernel_config("CONFIG_DUMMY") in ("y", "m", "?"):
        return "dummy"
    if Path("/dev/net/tun").exists() or _kernel_config("CONFIG_TUN") in ("y", "m"):
        return "tap"
    raise ContainerdError("this kernel has neither dummy links (CONFIG_DUMMY) nor tap devices (CONFIG_TUN)")


# --------------------------------------------------------------------------- TOML
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string of printable text is a TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {type(v).__name__}")


def to_toml(doc: Mapping[str, Any]) -> str:
    """Render nested dicts of str/int/bool/lists as TOML (tables after plain keys)."""
    lines: list[str] = []

    def table(d: Mapping[str, Any], path: list[str]) -> None:
        plain = {k: v for k, v in d.items() if not isinstance(v, Mapping)}
        subs = {k: v for k, v in d.items() if isinstance(v, Mapping)}
        if path and (plain or not subs):
            lines.append("")
            lines.append("[" + ".".join(json.dumps(p) for p in path) + "]")
        lines.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in plain.items())
        for k, v in subs.items():
            table(v, [*path, k])

    table(doc, [])
    text = "\n".join(lines).lstrip("\n") + "\n"
    if tomllib.loads(text) != json.loads(json.dumps(doc)):  # lists/tuples compare as lists
        raise AssertionError("to_toml produced TOML that does not parse back to its input")
    return text


# --------------------------------------------------------------------------- containerd
class Containerd:
    """One private containerd, its CRI and CNI; see the module docstring."""

    def __init__(
        self,
        workdir: Path | str,
        binaries: NodeBinaries | None = None,
        *,
        cdi_spec_dirs: Sequence[Path | str] = (),
        cni_conf_dir: Path | str | None = None,
        cni_bin_dir: Path | str | None = None,
        image: ImageInfo | None = None,
        pod_cidr: str = POD_CIDR,
        link_plugin: str | None = None,
        start_timeout: float = 60.0,
        keep_workdir: bool = False,
    ):
        self.workdir = Path(workdir).resolve()
        self.binaries = binaries
        self.image = image
        self.cdi_spec_dirs = [Path(d).resolve() for d in cdi_spec_dirs]
        self.cni_conf_dir = Path(cni_conf_dir).resolve() if cni_conf_dir else self.workdir / "cni" / "net.d"
        self._cni_bin_dir = Path(cni_bin_dir).resolve() if cni_bin_dir else None
        self.pod_cidr = pod_cidr
        #: ``dummy`` or ``tap`` (see the module docstring); chosen for this kernel by default.
        self.link_plugin = link_plugin or pod_link_plugin()
        self.start_timeout = start_timeout
        self.keep_workdir = keep_workdir or os.environ.get("RTDRA_KEEP_NODE", "") not in ("", "0")
        self.token = secrets.token_hex(4)
        self.socket = self.workdir / "containerd.sock"
        self.nri_socket = self.workdir / "nri.sock"
        self.config_file = self.workdir / "config.toml"
        self.crictl_config = self.workdir / "crictl.yaml"
        self.logs = self.workdir / "logs"
        self.log_file = self.logs / "containerd.log"
        shim_dir = self.workdir / "s"
        if len(str(shim_dir)) > MAX_SHIM_SOCKET_DIR:
            shim_dir = RECORD_DIR / f"s-{self.token}"
        self.shim_socket_dir = shim_dir
        #: Give pods this ``linux.cgroup_parent``: stop() kills and removes everything in it.
        self.cgroup_parent = f"/rt-dra-node-{self.token}"
        self.record_file = RECORD_DIR / f"{self.token}.json"
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._started = False
        #: Host paths outside the work dir that did not exist before start(): removed when empty.
        self._created: list[str] = []

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Containerd:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def cni_bin_dir(self) -> Path:
        if self._cni_bin_dir is not None:
            return self._cni_bin_dir
        if self.binaries is None:
            raise ContainerdError("no binaries yet: call start() first")
        return self.binaries.cni_bin_dir

    def start(self) -> Containerd:
        """Clean a crashed run's leftovers, start containerd, import the image, wait for the CRI."""
        if self._started:
            raise ContainerdError("already started")
        if os.geteuid() != 0:
            raise ContainerdError("containerd needs root")
        if len(str(self.socket)) > 100:
            raise ContainerdError(f"{self.socket} is too long for a unix socket: use a shorter workdir")
        if self.binaries is None:
            self.binaries = ensure_node_binaries()
        if self.image is None:
            self.image = build_image()
        clean_stale_instances()
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise ContainerdError(f"{self.workdir} is not empty")
        self._started = True
        try:
            t0 = time.monotonic()
            for d in (self.workdir, self.logs, self.shim_socket_dir, self.cni_conf_dir, *self.cdi_spec_dirs):
                d.mkdir(parents=True, exist_ok=True)
            self._created = [str(p) for p in (CNI_CACHE_DIR / "results", CNI_CACHE_DIR) if not p.exists()]
            self._write_record()
            self.config_file.write_text(to_toml(self.config()))
            (self.cni_conf_dir / "10-rtdra-pods.conflist").write_text(json.dumps(self.cni_config(), indent=2))
            self.crictl_config.write_text(
                f"runtime-endpoint: unix://{self.socket}\nimage-endpoint: unix://{self.socket}\n"
                "timeout: 30\ndebug: false\npull-image-on-create: false\ndisable-pull-on-run: true\n"
            )
            self._spawn()
            self._write_record()
            self._wait_serving()
            self.ctr("-n", CRI_NAMESPACE, "images", "import", "--local", str(self.image.tar_path))
            self._wait_cri_ready()
            self.start_seconds = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove all pods, kill containerd, shims and containers, unmount, remove dirs and cgroups."""
        if not self._started:
            return  # never started (or stopped): the workdir may not be ours to remove
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ContainerdError, subprocess.TimeoutExpired):
                self.crictl("rmp", "--force", "--all", timeout=60)
        if self.pid is not None:
            kill(self.pid, self._proc)
        self.pid, self._proc = None, None
        _cleanup(self._record(), keep_workdir=self.keep_workdir)
        self._started = False

    def restart(self) -> None:
        """Restart containerd alone, as a node's service manager does: shims and containers keep running."""
        if not self._started or self.pid is None:
            raise ContainerdError("not started")
        kill(self.pid, self._proc)
        self._spawn()
        self._write_record()
        self._wait_serving()
        self._wait_cri_ready()

    # ----------------------------------------------------------------- config
    def config(self) -> dict[str, Any]:
        """The containerd config (version 4) as nested dicts; see the module docstring."""
        assert self.binaries is not None and self.image is not None
        w = self.workdir
        return {
            "version": 4,
            "root": str(w / "root"),
            "state": str(w / "state"),
            "temp": str(w / "tmp"),
            "disabled_plugins": [
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.zfs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.blockfile",
                "io.containerd.tracing.processor.v1.otlp",
            ],
            "plugins": {
                "io.containerd.server.v1.grpc": {"address": str(self.socket)},
                "io.containerd.server.v1.ttrpc": {"address": f"{self.socket}.ttrpc"},
                "io.containerd.shim.v1.manager": {"socket_dir": str(self.shim_socket_dir)},
                "io.containerd.internal.v1.opt": {"path": str(w / "opt")},
                "io.containerd.nri.v1.nri": {
                    "disable": False,
                    "socket_path": str(self.nri_socket),
                    "plugin_path": str(w / "nri" / "plugins"),
                    "plugin_config_path": str(w / "nri" / "conf.d"),
                },
                "io.containerd.grpc.v1.cri": {
                    "disable_tcp_service": True,
                    "stream_server_address": "127.0.0.1",
                    "stream_server_port": "0",
                },
                "io.containerd.cri.v1.images": {
                    "snapshotter": "overlayfs",
                    "pinned_images": {"sandbox": self.image.name},
                },
                "io.containerd.cri.v1.runtime": {
                    "cdi_spec_dirs": [str(d) for d in self.cdi_spec_dirs],
                    "restrict_oom_score_adj": True,
                    "disable_apparmor": True,
                    "netns_mounts_under_state_dir": True,
                    "enable_selinux": False,
                    "cni": {
                        "bin_dirs": [str(self.cni_bin_dir)],
                        "conf_dir": str(self.cni_conf_dir),
                        "max_conf_num": 1,
                    },
                    "containerd": {
                        "default_runtime_name": "runc",
                        "runtimes": {
                            "runc": {
                                "runtime_type": "io.containerd.runc.v2",
                                "options": {
                                    "BinaryName": str(self.binaries.runc),
                                    "Root": str(w / "runc"),
                                    "SystemdCgroup": False,
                                },
                            }
                        },
                    },
                },
            },
        }

    def cni_config(self) -> dict[str, Any]:
        """A CNI network: an unconnected ``eth0`` in the pod's netns, host-local addresses, no routes."""
        link: dict[str, Any] = {"type": self.link_plugin}
        if self.link_plugin == "tap":
            # owner and group set: the plugin creates the tap over netlink, inside the pod's
            # netns, instead of running the host's `ip tuntap`
            link.update(owner=0, group=0)
        link["ipam"] = {
            "type": "host-local",
            "ranges": [[{"subnet": self.pod_cidr}]],
            "dataDir": str(self.workdir / "cni" / "ipam"),
        }
        return {"cniVersion": "1.0.0", "name": "rtdra-pods", "plugins": [link]}

    # ----------------------------------------------------------------- clients
    def _run(self, argv: list[str], timeout: float, input: str | None = None) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, check=False)
        except subprocess.TimeoutExpired as e:
            raise ContainerdError(f"{' '.join(argv)} timed out after {timeout}s") from e
        if proc.returncode != 0:
            raise ContainerdError(
                f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                f"containerd log tail:\n{tail(self.log_file, 20)}"
            )
        return proc.stdout

    def crictl(self, *args: str, timeout: float = 60.0, input: str | None = None) -> str:
        """Run crictl against this containerd's CRI; return stdout."""
        assert self.binaries is not None
        return self._run([str(self.binaries.crictl), "--config", str(self.crictl_config), *args], timeout, input)

    def ctr(self, *args: str, timeout: float = 60.0) -> str:
        """Run ctr against this containerd; return stdout."""
        assert self.binaries is not None
        return self._run([str(self.binaries.ctr), "--address", str(self.socket), *args], timeout)

    def cri_info(self) -> dict[str, Any]:
        return json.loads(self.crictl("info", "-o", "json"))

    # ----------------------------------------------------------------- internals
    def _spawn(self) -> None:
        assert self.binaries is not None
        (self.workdir / "tmp").mkdir(exist_ok=True)
        self._proc = spawn(
            [str(self.binaries.containerd), "--config", str(self.config_file), "--log-level", "info"],
            self.log_file,
            cwd=self.workdir,
            env={
                # containerd finds containerd-shim-runc-v2 on PATH
                "PATH": f"{self.binaries.bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TMPDIR": str(self.workdir / "tmp"),
            },
        )
        self.pid = self._proc.pid

    def _wait(self, what: str, ready: Any) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ContainerdError(
                    f"containerd exited ({self._proc.returncode}) while waiting for {what}:\n{tail(self.log_file)}"
                )
            try:
                if ready():
                    return
            except ContainerdError as e:
                last = str(e)
            time.sleep(0.2)
        raise ContainerdError(f"timed out waiting for {what}: {last}\n{tail(self.log_file)}")

    def _wait_serving(self) -> None:
        self._wait("containerd to serve", lambda: self.socket.exists() and bool(self.ctr("version", timeout=10)))

    def _wait_cri_ready(self) -> None:
        assert self.image is not None
        image = self.image

        def ready() -> bool:
            conditions = {c["type"]: c["status"] for c in self.cri_info()["status"]["conditions"]}
            if not (conditions.get("RuntimeReady") and conditions.get("NetworkReady")):
                raise ContainerdError(f"CRI conditions: {conditions}")
            return bool(self.crictl("inspecti", "-o", "json", image.name, timeout=10))

        self._wait("the CRI to be ready (RuntimeReady, NetworkReady, image imported)", ready)

    def _record(self) -> dict[str, Any]:
        return {
            "owner_pid": os.getpid(),
            "owner_start": proc_start_time(os.getpid()),
            "record_file": str(self.record_file),
            "workdir": str(self.workdir),
            "dirs": [str(self.workdir), str(self.shim_socket_dir)],
            "socket": str(self.socket),
            "cgroup_parent": self.cgroup_parent,
            "cni_networks": ["cni-loopback", self.cni_config()["name"]],
            "created": self._created,
            "containerd_pid": self.pid,
            "containerd_start": proc_start_time(self.pid) if self.pid else "",
        }

    def _write_record(self) -> None:
        RECORD_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.record_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._record(), indent=2))
        tmp.replace(self.record_file)


def _task_ids(state_dir: Path) -> list[str]:
    """Ids of every container and sandbox containerd still has state for."""
    ids: set[str] = set()
    for d in (
        state_dir / "io.containerd.runtime.v2.task" / CRI_NAMESPACE,
        state_dir / "io.containerd.grpc.v1.cri" / "sandboxes",
        state_dir / "io.containerd.grpc.v1.cri" / "containers",
    ):
        with contextlib.suppress(OSError):
            ids.update(p.name for p in d.iterdir())
    return sorted(ids)


def _remove_cni_cache(networks: Sequence[str], ids: Sequence[str]) -> None:
    results = CNI_CACHE_DIR / "results"
    for net in networks:
        for sandbox in ids:
            for f in results.glob(f"{net}-{sandbox}-*"):
                with contextlib.suppress(OSError):
                    f.unlink()


def _cleanup(record: Mapping[str, Any], *, keep_workdir: bool = False) -> None:
    """Undo everything one instance (alive or crashed) left: processes, mounts, cgroups, dirs."""
    pid = record.get("containerd_pid")
    if pid and proc_start_time(pid) == record.get("containerd_start"):
        kill(pid, None, grace=5)
    workdir = Path(record["workdir"])
    ids = _task_ids(workdir / "state")
    # containers first (no shim left to restart or report them), then their shims
    cgroups = [record["cgroup_parent"]] + [f"/{CRI_NAMESPACE}/{i}" for i in ids]
    for rel in cgroups:
        kill_cgroup(rel)
    for shim in shim_pids(Path(record["socket"])):
        kill(shim, None, grace=2)
    dirs = [Path(d) for d in record["dirs"]]
    unmount_all(dirs)
    left = mounts_under(dirs)
    if left:
        raise ContainerdError(f"could not unmount {left}")
    for d in dirs:
        if d == workdir and keep_workdir:
            continue
        shutil.rmtree(d, ignore_errors=True)
    _remove_cni_cache(record.get("cni_networks", []), ids)
    for created in record.get("created", []):
        with contextlib.suppress(OSError):
            Path(created).rmdir()  # only when empty: another instance may use it now
    with contextlib.suppress(OSError):
        Path(record["record_file"]).unlink()
    with contextlib.suppress(OSError):
        RECORD_DIR.rmdir()  # only when empty: other instances keep theirs


def clean_stale_instances() -> list[str]:
    """Clean up after every recorded instance whose owning process is gone; return their workdirs."""
    cleaned = []
    if not RECORD_DIR.is_dir():
        return cleaned
    for f in sorted(RECORD_DIR.glob("*.json")):
        try:
            record = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        owner = int(record.get("owner_pid") or 0)
        if owner and pid_alive(owner) and proc_start_time(owner) == record.get("owner_start"):
            continue
        _cleanup(record)
        cleaned.append(record["workdir"])
    return cleaned
