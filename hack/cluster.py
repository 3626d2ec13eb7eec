#!/usr/bin/env python3
"""A real, local Kubernetes control plane for the e2e tests and the demo.

Runs the upstream programs - etcd, kube-apiserver, kube-scheduler and (opt-in,
``controller_manager=True``) kube-controller-manager, built from source by
hack/controlplane/build.sh and cached under ~/.cache/rt-dra/ - on 127.0.0.1
with free ports, fresh certificates and RBAC on. It runs no kubelet: either
``create_node`` writes Ready Node objects itself (pods bound there stay
Pending unless something plays the node, e.g. ``hack/nodesim.py``), or a real
kubelet + containerd node joins it (``hack/node.py``). The same build
provides ``kubectl`` (``Binaries.kubectl``) for tests that drive the cluster as an
operator would.

Library use::

    from hack.cluster import ControlPlane
    with ControlPlane(Path("/tmp/cp")) as cp:
        api = cp.api_client()
        cp.create_node("n1")

CLI (``make cluster-up`` / ``make cluster-down``)::

    python hack/cluster.py up --dir .cluster     # last line: .cluster/kubeconfig
    python hack/cluster.py down --dir .cluster

Consequences of running without kube-controller-manager (the default; deliberate):
- The ServiceAccount admission plugin is disabled: it rejects every pod whose
  ServiceAccount does not exist, and the "default" ServiceAccount of each
  namespace is created by kube-controller-manager's serviceaccount controller.
  (Service-account *tokens* still work: the TokenRequest API is served by
  kube-apiserver itself - see ``service_account_kubeconfig``.)
  ``ControlPlane(controller_manager=True, service_accounts=True)`` turns it on, so
  pods get their ServiceAccount's projected token as on any cluster (``hack/install.py``).
- TaintNodesByCondition is disabled: it taints every new Node
  ``node.kubernetes.io/not-ready:NoSchedule`` and only the node-lifecycle
  controller removes that taint. ``create_node`` also strips it if present.
- Namespaces stay Terminating after deletion (namespace controller) and
  ownerReferences are not garbage-collected: tests use unique names and delete
  their objects explicitly.
- The built-in *aggregated* ClusterRoles admin/edit/view have no rules (the
  clusterrole-aggregation controller fills them): bind explicit roles instead.
- ``--endpoint-reconciler-type=none``: kube-apiserver v1.37 refuses a loopback
  ``--advertise-address`` with the lease reconciler; the "kubernetes" Service
  has no Endpoints (nothing here routes to it).

Environment: ``RTDRA_K8S_BIN_DIR`` (use these binaries, no build),
``RTDRA_CACHE`` (cache root, default ~/.cache/rt-dra), ``K8S_VERSION``,
``RTDRA_KEEP_CLUSTER=1`` (keep the workdir with logs after stop()).
Processes started by a ControlPlane (not ``up``) get SIGKILL if the Python
process that started them dies (PR_SET_PDEATHSIG), so a crashed test run
leaves nothing behind.

This module is the life cycle (start, health checks, stop, attach, the CLI)
and the scheduler's configuration; the rest is by concern: the programs and
their build in ``hack.k8sbins``, certificates and kubeconfigs in ``hack.pki``
(through ``rtdra.certs``, the CA code ``rtdra certs`` uses), kubelet-less
Nodes in ``hack.fakenodes``, processes in ``hack.procs``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes import config as kconfig
from kubernetes.client.rest import ApiException

if __package__ in (None, ""):  # run as a script: make ``hack`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack import fakenodes
from hack.k8sbins import Binaries, BuildError, ensure_binaries
from hack.pki import client_kubeconfig, write_control_plane_pki, write_kubeconfig
from hack.procs import free_port, kill, pid_alive, pid_cmdline, spawn, tail
from rtdra.certs import CertificateAuthority

STATE_FILE = "state.json"
SCHEDULER_API = "kubescheduler.config.k8s.io/v1"

# Admission: the defaults of kube-apiserver v1.37 (which include
# MutatingAdmissionWebhook and ValidatingAdmissionWebhook) plus NodeRestriction,
# minus the two plugins that need kube-controller-manager (see module docstring).
ENABLE_ADMISSION = "NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook"
DISABLE_ADMISSION = "ServiceAccount,TaintNodesByCondition"
DISABLE_ADMISSION_SA = "TaintNodesByCondition"  # ControlPlane(service_accounts=True)

SERVICE_CIDR = "10.96.0.0/16"  # only allocated from, never routed: no traffic leaves 127.0.0.1
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ControlPlaneError(RuntimeError):
    """Starting/stopping the control plane failed; the message has the log tail."""


# --------------------------------------------------------------------------- control plane
class ControlPlane:
    """etcd + kube-apiserver + kube-scheduler on 127.0.0.1, with RBAC.

    ``ControlPlane(workdir).start()`` ... ``.stop()`` (or ``with ControlPlane(d) as cp``).
    ``ControlPlane.attach(workdir)`` re-opens one started by another process (the CLI).
    """

    def __init__(
        self,
        workdir: Path | str,
        binaries: Binaries | None = None,
        *,
        start_timeout: float = 120.0,
        keep_workdir: bool = False,
        controller_manager: bool = False,
        service_accounts: bool = False,
    ):
        self.workdir = Path(workdir).resolve()
        self.binaries = binaries
        self.start_timeout = start_timeout
        # RTDRA_KEEP_CLUSTER=1 keeps the workdir (logs!) after stop() for debugging
        self.keep_workdir = keep_workdir or os.environ.get("RTDRA_KEEP_CLUSTER", "") not in ("", "0")
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.scheduler_kubeconfig = self.workdir / "scheduler.kubeconfig"
        self.controller_manager_kubeconfig = self.workdir / "controller-manager.kubeconfig"
        # kube-controller-manager runs the workload controllers (Deployment ->
        # ReplicaSet -> Pod), garbage collection and namespace deletion; off by
        # default so the smoke tests keep their minimal, deterministic cluster.
        self.controller_manager = controller_manager
        # The ServiceAccount admission plugin on (needs kube-controller-manager: it creates each
        # namespace's "default" ServiceAccount): pods get a projected, pod-bound token of their
        # ServiceAccount, as on any cluster - what in-cluster RT-DRA components run with
        # (tests/e2e/test_install.py). Off by default, see the module docstring.
        if service_accounts and not controller_manager:
            raise ValueError("service_accounts=True needs controller_manager=True")
        self.service_accounts = service_accounts
        self.scheduler_config_file = self.workdir / "scheduler-config.yaml"
        self.ca_file = self.pki / "ca.crt"
        self.server = ""
        self.ports: dict[str, int] = {}
        self.pids: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._ca: CertificateAuthority | None = None
        self._detached = False
        self._started = False

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> ControlPlane:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, *, detach: bool = False) -> ControlPlane:
        """Generate PKI and kubeconfigs, start etcd, kube-apiserver and kube-scheduler
        and wait until all are healthy. ``detach`` puts them in their own session so
        they outlive this Python process (the CLI ``up``)."""
        if self._started:
            raise ControlPlaneError("already started")
        self._detached = detach
        if self.binaries is None:
            self.binaries = ensure_binaries()
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise ControlPlaneError(
                f"{self.workdir} is not empty (a cluster may be running there; "
                f"use `hack/cluster.py down --dir {self.workdir}`)"
            )
        for d in (self.workdir, self.pki, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self._started = True
        try:
            t0 = time.monotonic()
            self._choose_ports()
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._write_state()
            if self.controller_manager:
                self._start_controller_manager()
            self.configure_scheduler(None)
            self.start_seconds = time.monotonic() - t0
            self._write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill kube-scheduler, kube-apiserver and etcd; remove the workdir."""
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self.stop_process(name)
        self._started = False
        if not self.keep_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_process(self, name: str) -> None:
        """Stop one of the programs, e.g. ``"kube-scheduler"`` (which :meth:`configure_scheduler` starts again)."""
        pid = self.pids.pop(name, None)
        if pid is not None:
            kill(pid, self._procs.pop(name, None))

    def restart(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one component (hard by default) and start it again with the same ports and data (chaos tests)."""
        starts = {
            "etcd": self._start_etcd,
            "kube-apiserver": self._start_apiserver,
            "kube-controller-manager": self._start_controller_manager,
        }
        if name not in starts:
            raise ControlPlaneError(f"cannot restart {name!r} (one of {', '.join(starts)})")
        pid = self.pids.get(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        self.stop_process(name)
        starts[name]()
        self._write_state()

    @classmethod
    def attach(cls, workdir: Path | str) -> ControlPlane:
        """Open a control plane started (e.g. by ``hack/cluster.py up``) in ``workdir``."""
        cp = cls(workdir)
        state_path = cp.workdir / STATE_FILE
        if not state_path.exists():
            raise ControlPlaneError(f"no control plane state in {cp.workdir}")
        st = json.loads(state_path.read_text())
        cp.server, cp.ports, cp.pids = st["server"], st["ports"], {k: int(v) for k, v in st["pids"].items()}
        cp.binaries = Binaries.from_dir(Path(st["bin_dir"])) if st.get("bin_dir") else None
        cp._started, cp._detached = True, True
        return cp

    def all_pids(self) -> dict[str, int]:
        return dict(self.pids)

    # ----------------------------------------------------------------- internals
    def _choose_ports(self) -> None:
        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(free_port())
        it = iter(sorted(ports))
        self.ports = {
            "etcd-client": next(it),
            "etcd-peer": next(it),
            "apiserver": next(it),
            "scheduler": next(it),
            "controller-manager": next(it),
        }
        self.server = f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            self._ca = CertificateAuthority.from_pem(self.ca_file.read_bytes(), (self.pki / "ca.key").read_bytes())
        return self._ca

    def _write_pki(self) -> None:
        svc_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))  # 10.96.0.1
        self._ca = ca = write_control_plane_pki(self.pki, svc_ip)
        client_kubeconfig(ca, self.kubeconfig, self.server, "kubernetes-admin", ["system:masters"], user="admin")
        client_kubeconfig(ca, self.scheduler_kubeconfig, self.server, "system:kube-scheduler")
        # kube-controller-manager: one identity for all its controllers (no
        # --use-service-account-credentials), so it needs to be an admin here.
        client_kubeconfig(
            ca, self.controller_manager_kubeconfig, self.server, "system:kube-controller-manager", ["system:masters"]
        )

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        proc = spawn(argv, self.logs / f"{name}.log", cwd=self.workdir, detach=self._detached)
        self._procs[name] = proc
        self.pids[name] = proc.pid
        return proc

    def _wait(self, name: str, url: str, timeout: float, ssl_ctx: ssl.SSLContext | None = None) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {proc.returncode} during start-up; "
                    f"last lines of {self.logs / (name + '.log')}:\n{tail(self.logs / (name + '.log'))}"
                )
            try:
                with urllib.request.urlopen(url, timeout=3, context=ssl_ctx) as r:
                    body = r.read().decode(errors="replace")
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}: {body[:500]}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read().decode(errors='replace')[:1500]}"
            except (OSError, ssl.SSLError) as e:
                last = repr(e)
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{name} not healthy at {url} after {timeout:.0f}s (last answer: {last}); "
            f"last lines of {self.logs / (name + '.log')}:\n{tail(self.logs / (name + '.log'))}"
        )

    def admin_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd-client']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        assert self.binaries is not None
        self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=rtdra",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=rtdra={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # throw-away test data: durability not needed
                "--quota-backend-bytes=1073741824",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", f"{client}/health", self.start_timeout)

    def _start_apiserver(self) -> None:
        p = self.pki
        assert self.binaries is not None
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd-client']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The lease/master-count reconcilers reject a loopback advertise address
                # (kubernetes PR 138102); nothing here needs the "kubernetes" Endpoints.
                "--endpoint-reconciler-type=none",
                f"--secure-port={self.ports['apiserver']}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--anonymous-auth=false",
                f"--enable-admission-plugins={ENABLE_ADMISSION}{',ServiceAccount' * self.service_accounts}",
                f"--disable-admission-plugins={DISABLE_ADMISSION_SA if self.service_accounts else DISABLE_ADMISSION}",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={p}",
                "--v=1",
            ],
        )
        self._wait("kube-apiserver", f"{self.server}/readyz", self.start_timeout, self.admin_ssl_context())

    def _start_controller_manager(self) -> None:
        assert self.binaries is not None
        if self.binaries.kube_controller_manager is None:
            raise ControlPlaneError("kube-controller-manager was not built (rerun hack/controlplane/build.sh)")
        kc, p, port = self.controller_manager_kubeconfig, self.pki, self.ports["controller-manager"]
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # No kubelets renew node leases here: the node lifecycle controllers
                # would mark every node unreachable and evict its pods.
                "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller,-device-taint-eviction-controller",
                "--v=1",
            ],
        )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert generated by the program
        self._wait("kube-controller-manager", f"https://127.0.0.1:{port}/healthz", self.start_timeout, ctx)

    def _write_state(self) -> None:
        st = {
            "server": self.server,
            "ports": self.ports,
            "pids": self.pids,
            "kubeconfig": str(self.kubeconfig),
            "ca_file": str(self.ca_file),
            "bin_dir": str(self.binaries.kube_apiserver.parent) if self.binaries else None,
            "versions": dict(self.binaries.versions) if self.binaries else {},
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(st, indent=2) + "\n")

    # ----------------------------------------------------------------- scheduler
    def default_scheduler_config(self) -> dict[str, Any]:
        return {
            "apiVersion": SCHEDULER_API,
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.scheduler_kubeconfig)},
            "leaderElection": {"leaderElect": False},
        }

    def configure_scheduler(self, config: str | Mapping[str, Any] | None) -> Path:
        """(Re)start kube-scheduler with this KubeSchedulerConfiguration (YAML text or dict;
        None = default). clientConnection.kubeconfig and leaderElection.leaderElect=false are
        filled in when absent, so a test only writes e.g. ``extenders:``. Returns the file."""
        cfg: dict[str, Any] = self.default_scheduler_config()
        if config is not None:
            user = yaml.safe_load(config) if isinstance(config, str) else dict(config)
            for k, v in (user or {}).items():
                if k in ("clientConnection", "leaderElection") and isinstance(v, Mapping):
                    cfg[k] = {**cfg[k], **v}
                else:
                    cfg[k] = v
        self.scheduler_config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.stop_process("kube-scheduler")
        assert self.binaries is not None
        port = self.ports["scheduler"]
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries.kube_scheduler),
                f"--config={self.scheduler_config_file}",
                f"--authentication-kubeconfig={self.scheduler_kubeconfig}",
                f"--authorization-kubeconfig={self.scheduler_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--v=2",
            ],
        )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert generated by kube-scheduler
        try:
            self._wait("kube-scheduler", f"https://127.0.0.1:{port}/readyz", self.start_timeout, ctx)
        except ControlPlaneError:
            self.stop_process("kube-scheduler")
            raise
        if (self.workdir / STATE_FILE).exists():
            self._write_state()
        return self.scheduler_config_file

    # ----------------------------------------------------------------- clients & identities
    def api_client(self, kubeconfig: Path | str | None = None):
        """A kubernetes.client.ApiClient for admin (or for the given kubeconfig)."""
        return kconfig.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def make_user_kubeconfig(self, username: str, groups: Sequence[str] = (), path: Path | str | None = None) -> Path:
        """A kubeconfig authenticating by client certificate as ``username`` in ``groups``."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in username)
        dest = Path(path) if path else self.workdir / "users" / f"{safe}.kubeconfig"
        return client_kubeconfig(self.ca, dest, self.server, username, groups)

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        *,
        create: bool = True,
        expiration_seconds: int = 86400,
        path: Path | str | None = None,
    ) -> Path:
        """A kubeconfig with a real ServiceAccount token (TokenRequest API, signed by
        kube-apiserver), so components run with exactly that ServiceAccount's RBAC.
        ``create`` creates the namespace and ServiceAccount if missing."""
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            if create:
                for create_call in (
                    lambda: core.create_namespace({"metadata": {"name": namespace}}),
                    lambda: core.create_namespaced_service_account(namespace, {"metadata": {"name": name}}),
                ):
                    try:
                        create_call()
                    except ApiException as e:
                        if e.status != 409:  # already exists
                            raise
            tr = core.create_namespaced_service_account_token(
                name, namespace, {"spec": {"expirationSeconds": expiration_seconds}}
            )
        dest = Path(path) if path else self.workdir / "users" / f"sa-{namespace}-{name}.kubeconfig"
        return write_kubeconfig(
            dest, self.server, self.ca.cert_pem, f"system:serviceaccount:{namespace}:{name}", token=tr.status.token
        )

    # ----------------------------------------------------------------- nodes
    def create_node(self, name: str, **node: Any) -> dict:
        """A Node that looks Ready with no kubelet: :func:`hack.fakenodes.create_node` (same arguments)."""
        with self.api_client() as api:
            return fakenodes.create_node(api, name, **node)

    def delete_node(self, name: str) -> None:
        with self.api_client() as api:
            fakenodes.delete_node(api, name)


# --------------------------------------------------------------------------- CLI
def _cmd_up(args: argparse.Namespace) -> int:
    workdir = Path(args.dir)
    if (workdir / STATE_FILE).exists():
        cp = ControlPlane.attach(workdir)
        if all(pid_alive(p) for p in cp.pids.values()):
            print(f"control plane already running at {cp.server}", file=sys.stderr)
            print(workdir / "kubeconfig")
            return 0
        print(f"stale state in {workdir}; cleaning up", file=sys.stderr)
        _down(workdir)
    bins = ensure_binaries()
    cp = ControlPlane(workdir, bins, controller_manager=bins.kube_controller_manager is not None)
    t0 = time.monotonic()
    cp.start(detach=True)
    print(
        f"control plane up in {time.monotonic() - t0:.1f}s: {cp.server} "
        f"(kubernetes {bins.versions.get('kubernetes', '?')}, etcd {bins.versions.get('etcd', '?')}); "
        f"pids {cp.pids}; logs in {cp.logs}",
        file=sys.stderr,
    )
    print(f"export KUBECONFIG={cp.kubeconfig}", file=sys.stderr)
    # Relative path as given, so `make` output is short; LAST line = kubeconfig.
    print(workdir / "kubeconfig")
    return 0


def _down(workdir: Path) -> None:
    if (workdir / STATE_FILE).exists():
        cp = ControlPlane.attach(workdir)
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            pid = cp.pids.get(name)
            # only kill what is really ours: its command line names this workdir
            if pid and pid_alive(pid) and str(cp.workdir) in pid_cmdline(pid):
                kill(pid, None)
    shutil.rmtree(workdir, ignore_errors=True)


def _cmd_down(args: argparse.Namespace) -> int:
    workdir = Path(args.dir)
    if not workdir.exists():
        print(f"nothing at {workdir}", file=sys.stderr)
        return 0
    _down(workdir)
    print(f"control plane in {workdir} stopped and removed", file=sys.stderr)
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    b = ensure_binaries()
    print(b.kube_apiserver.parent)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver, kube-scheduler in the background")
    up.add_argument("--dir", default=".cluster")
    up.set_defaults(fn=_cmd_up)
    down = sub.add_parser("down", help="stop the control plane and remove its directory")
    down.add_argument("--dir", default=".cluster")
    down.set_defaults(fn=_cmd_down)
    b = sub.add_parser("build", help="build (or reuse) the binaries; print their directory")
    b.set_defaults(fn=_cmd_build)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (ControlPlaneError, BuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
