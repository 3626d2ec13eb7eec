"""The whole RT-DRA chain on the local control plane: what the demo and the e2e tests run.

On a :class:`hack.cluster.ControlPlane` (real etcd, kube-apiserver,
kube-scheduler and kube-controller-manager) it

1. applies the shipped manifests an operator would apply - namespace, CRDs,
   ServiceAccounts, RBAC, the agent's ValidatingAdmissionPolicy - leaving out
   only what needs a container engine (Deployments, the DaemonSet);
2. creates the simulated nodes and, on each, the agent's "DaemonSet pod" whose
   bound ServiceAccount token carries the node's name (so the own-node NAS
   policy is enforced for real);
3. runs one ``rtdra-agent`` per node under that token (``--backend deadline``
   for the node that is this machine, ``none`` for the others), the extender
   (``rtdra-extender``) under its ServiceAccount, and kube-scheduler configured
   to call it; the webhook (``rtdra-webhook``) over HTTPS with a certificate
   from ``rtdra certs``, registered through the shipped
   MutatingWebhookConfiguration (its service reference swapped for a
   127.0.0.1 URL - there is no cluster network here);
4. runs the nodes: a node marked ``real`` is this machine as a real
   Kubernetes node (``hack/node.py``: upstream kubelet + containerd + runc,
   the agent serving kubelet as a device plugin and containerd as its NRI
   plugin); the others
   are played by the node simulator (``hack/nodesim.py``), which starts a
   process per container and calls the agent's CDI hooks.

A real node in ``mode="dra"`` serves RT pods through DRA instead (docs/dra-node.md): its agent
publishes the node's CPUs as a ResourceSlice pool and is kubelet's DRA plugin (under the
node's kubelet root dir); its NAS stays NotReady (the extender books nothing there), and the
stack creates the DeviceClass ``rt.resource.example.com`` if no manifest did.

Every process it starts is killed by :meth:`Stack.stop`, and dies with the
Python process that started it.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, dynamic
from kubernetes.client.rest import ApiException

HACK = Path(__file__).resolve().parent
sys.path.insert(0, str(HACK.parent))

from hack.cluster import ControlPlane  # noqa: E402
from hack.k8sbins import ensure_binaries  # noqa: E402
from hack.node import RealNode  # noqa: E402
from hack.nodesim import NodeSimulator, SimNode  # noqa: E402
from hack.pki import write_kubeconfig  # noqa: E402
from hack.procs import free_port, kill_group, spawn  # noqa: E402
from rtdra import dra, names  # noqa: E402

REPO = HACK.parent
MANIFESTS = REPO / "manifests"
NAMESPACE = "rt-dra"
BIN = Path(sys.executable).parent
#: Kinds an operator applies that need a container engine to do anything.
NEEDS_RUNTIME = frozenset({"Deployment", "DaemonSet", "StatefulSet", "Job"})
#: Not API objects, or registered by the stack itself with a loopback URL.
NOT_APPLIED = frozenset({"KubeSchedulerConfiguration", "MutatingWebhookConfiguration", "Kustomization"})
#: A DRA-mode real node's kubelet --root-dir (:class:`hack.node.RealNode` ``root_dir``; one real node at a time).
DRA_KUBELET_ROOT = Path("/var/lib/rt-dra-node/kubelet")
#: The lock the real-kernel tests take (tests/kernel/conftest.py): one user of
#: the machine's deadline bandwidth at a time, or their leak checks misfire.
KERNEL_LOCK = (
    Path("/run/lock/rtdra-kernel-tests.lock") if Path("/run/lock").is_dir() else Path("/tmp/rtdra-kernel-tests.lock")
)
#: Order of application: what others depend on first.
KIND_ORDER = ("Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "Role")


@dataclass(frozen=True)
class NodeSpec:
    """A node of the stack: its name, the agent's backend, and (for ``none``) how many CPUs it pretends to have.

    ``real``: this machine as a real kubelet + containerd node (at most one per machine); otherwise simulated.
    ``mode`` (real nodes): how the agent hears of container starts - ``nri`` (the fast path: containerd's NRI
    plugin, no process per container) or ``cdi`` (the device plugin hands each RT container the CDI device,
    whose OCI hook calls the agent: the path any CDI runtime has) or ``dra`` (the node's CPUs are
    ResourceSlice devices; kubelet prepares pods' ResourceClaims through the agent's DRA plugin, and
    each claim's CDI device carries the hook).
    """

    name: str
    backend: str = "none"
    cpus: int | None = None
    real: bool = False
    mode: str = "nri"


def manifest_documents(paths: Iterable[Path] | None = None) -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k manifests/`` applies (or those in ``paths``), in dependency order."""
    if paths is None:
        kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
        paths = [MANIFESTS / r for r in kustomization["resources"]]
    docs = [d for f in paths for d in yaml.safe_load_all(Path(f).read_text()) if isinstance(d, dict) and d.get("kind")]
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(docs, key=lambda d: rank.get(d["kind"], len(KIND_ORDER)))


def apply(api: client.ApiClient, docs: Iterable[Mapping[str, Any]], *, dry_run: bool = False) -> list[str]:
    """Server-side apply each object (``dry_run``: the apiserver validates, nothing is stored)."""
    dyn = dynamic.DynamicClient(api)
    applied = []
    for doc in docs:
        resource = _resource(dyn, doc["apiVersion"], doc["kind"])
        meta = doc.get("metadata") or {}
        kwargs: dict[str, Any] = {"field_manager": "rt-dra-stack", "force_conflicts": True}
        if dry_run:
            kwargs["dry_run"] = "All"
        if resource.namespaced:
            kwargs["namespace"] = meta.get("namespace") or "default"
        dyn.server_side_apply(resource, body=dict(doc), name=meta["name"], **kwargs)
        applied.append(f"{doc['kind']}/{meta['name']}")
        if doc["kind"] == "CustomResourceDefinition" and not dry_run:
            _wait_established(api, meta["name"])
            dyn = dynamic.DynamicClient(api)  # rediscover: the new kind exists now
    return applied


def _resource(dyn: dynamic.DynamicClient, api_version: str, kind: str) -> Any:
    for attempt in range(20):
        try:
            return dyn.resources.get(api_version=api_version, kind=kind)
        except dynamic.exceptions.ResourceNotFoundError:
            if attempt == 19:
                raise
            time.sleep(0.25)
            dyn.resources.invalidate_cache()
    raise AssertionError("unreachable")


def _wait_established(api: client.ApiClient, name: str, timeout: float = 30) -> None:
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(name)
        if any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
            return
        time.sleep(0.1)
    raise TimeoutError(f"CRD {name} not Established after {timeout}s")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ApiException, OSError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


class Stack:
    """Agents, extender, webhook and the nodes (real or simulated) on a running control plane."""

    def __init__(
        self,
        cp: ControlPlane,
        nodes: Sequence[NodeSpec],
        *,
        progress: Callable[[str], None] = lambda _msg: None,
        extender_args: Sequence[str] = (),
        agent_args: Sequence[str] = (),
        dra_scoring: bool = False,
    ) -> None:
        self.cp = cp
        self.nodes = list(nodes)
        self.progress = progress
        self.extender_args = list(extender_args) + (["--dra-scoring"] if dra_scoring else [])
        #: DRA mode's optional scoring: the extender serves /dra/prioritize and kube-scheduler calls it.
        self.dra_scoring = dra_scoring
        #: Added to every agent's command line (e.g. a faster Lease renewal for fault tests).
        self.agent_args = list(agent_args)
        self.workdir = cp.workdir / "stack"
        self.logs = self.workdir / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.sim: NodeSimulator | None = None
        self.extender_port = 0
        self.webhook_port = 0
        self.api = cp.api_client()
        self._kernel_lock: Any = None
        #: The real kubelet nodes (``NodeSpec.real``), by name.
        self.real: dict[str, RealNode] = {}
        #: Every process started for this stack (filled by :func:`running_stack`), for leak checks.
        self.pids: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Stack:
        try:
            if any(n.backend == "deadline" for n in self.nodes):
                self._kernel_lock = open(KERNEL_LOCK, "a+")  # noqa: SIM115 - held until stop()
                fcntl.flock(self._kernel_lock, fcntl.LOCK_EX)
            self.logs.mkdir(parents=True, exist_ok=True)
            self.progress("applying the manifests (CRDs, RBAC, admission policy)")
            apply(self.api, [d for d in manifest_documents() if d["kind"] not in NEEDS_RUNTIME | NOT_APPLIED])
            for node in self.nodes:
                if node.real:
                    self.progress(f"node {node.name}: this machine as a real node (kubelet, containerd, runc)")
                    workdir = self.workdir / "nodes" / node.name / "node"
                    # DRA: the plugin's sockets live under kubelet's root dir, and a socket path has 107 bytes.
                    root = DRA_KUBELET_ROOT if node.mode == "dra" else None
                    self.real[node.name] = RealNode(
                        self.cp, node.name, workdir, progress=self.progress, root_dir=root
                    ).start()
                else:
                    self.progress(f"node {node.name}: creating it (simulated)")
                    self.cp.create_node(node.name, cpu=str(node.cpus or os.cpu_count() or 1))
                self.progress(f"node {node.name}: starting its agent (backend {node.backend})")
                self.start_agent(node)
            for node in self.nodes:
                if node.mode == "dra" and node.real:
                    wait_for(
                        f"{node.name}: DRA plugin registered with kubelet, ResourceSlices published",
                        lambda n=node.name: self.dra_ready(n),
                    )
                    continue
                wait_for(f"NodeAllocationState of {node.name} Ready", lambda n=node.name: self.nas_ready(n))
            for node in self.nodes:
                if node.real and node.mode != "dra":
                    wait_for(
                        f"{node.name} offers {names.DL_RESOURCE} (the agent's device plugin)",
                        lambda n=node.name: self.offers(n),
                    )
            if any(n.mode == "dra" and n.real for n in self.nodes):
                self.ensure_device_class()
            self.progress("starting the scheduler extender and pointing kube-scheduler at it")
            self.start_extender()
            self.progress("creating the webhook's certificates and registering it")
            self.start_webhook()
            sim_nodes = [SimNode(n.name, (self.cdi_dir(n.name),)) for n in self.nodes if not n.real]
            if sim_nodes:
                self.progress("starting the node simulator")
                self.sim = NodeSimulator(self.api, sim_nodes).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Containers first, while the agents run: their poststop hooks release what the agents applied.
        if self.sim is not None:
            self.sim.stop()
            self.sim = None
        for name in list(self.real):
            self.real.pop(name).stop()
        for name in list(self.procs):
            self.stop_process(name)
        with contextlib.suppress(Exception):
            self.api.close()
        if self._kernel_lock is not None:
            fcntl.flock(self._kernel_lock, fcntl.LOCK_UN)
            self._kernel_lock.close()
            self._kernel_lock = None

    # -- processes ------------------------------------------------------------------

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = spawn(argv, self.logs / f"{name}.log", env=env)
        self.procs[name] = proc
        return proc

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if sig != signal.SIGTERM and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        kill_group(proc)  # gunicorn workers and any hook left over too

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- the agents -------------------------------------------------------------------

    def cdi_dir(self, node: str) -> Path:
        """Where the node's agent writes its CDI spec: the real node's runtime reads it there."""
        if node in self.real:
            return self.real[node].cdi_dir
        return self.workdir / "nodes" / node / "cdi"

    def offers(self, node: str) -> bool:
        """Whether kubelet reports the agent's device-plugin resource as allocatable on ``node``."""
        allocatable = client.CoreV1Api(self.api).read_node(node).status.allocatable or {}
        return int(allocatable.get(names.DL_RESOURCE, "0")) > 0

    @property
    def image(self) -> str:
        """The image pods use on the real node (made here from host files, never pulled)."""
        for node in self.real.values():
            if node.image is not None:
                return node.image.name
        return "busybox"

    def pod_spec(self, containers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """A pod spec that runs on the real node too: the local image, never pulled, a command that sleeps."""
        return {
            "containers": [
                {
                    "image": self.image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "env | grep ^RT_ || true; exec sleep 2147483647"],
                    **dict(c),
                }
                for c in containers
            ],
            "terminationGracePeriodSeconds": 1,
            "dnsPolicy": "Default",  # no cluster DNS here: the node's resolv.conf, without kubelet's warning
        }

    def agent_kubeconfig(self, node: str) -> Path:
        """A token of the agent's ServiceAccount bound to its pod on ``node`` (as the DaemonSet's would be)."""
        core = client.CoreV1Api(self.api)
        pod_name = f"rtdra-agent-{node}"
        body = {
            "metadata": {"name": pod_name, "namespace": NAMESPACE, "labels": {"app": "rtdra-agent"}},
            # On a real node kubelet runs this pod: a sleeping container of the local image stands in
            # for the agent's (the agent itself runs as a local process under this pod's token).
            "spec": {
                "nodeName": node,
                "serviceAccountName": "rtdra-agent",
                **self.pod_spec([{"name": "agent"}]),
            },
        }
        try:
            pod = core.create_namespaced_pod(NAMESPACE, body)
        except ApiException as err:
            if err.status != 409:
                raise
            pod = core.read_namespaced_pod(pod_name, NAMESPACE)
        token = core.create_namespaced_service_account_token(
            "rtdra-agent",
            NAMESPACE,
            {
                "spec": {
                    "expirationSeconds": 86400,
                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod_name, "uid": pod.metadata.uid},
                }
            },
        ).status.token
        return write_kubeconfig(
            self.workdir / "nodes" / node / "agent.kubeconfig",
            self.cp.server,
            self.cp.ca_file.read_bytes(),
            "system:serviceaccount:rt-dra:rtdra-agent",
            token=token,
        )

    def start_agent(self, node: NodeSpec) -> None:
        state = self.workdir / "nodes" / node.name / "state"
        state.mkdir(parents=True, exist_ok=True)
        self.cdi_dir(node.name).mkdir(parents=True, exist_ok=True)
        argv = [
            str(BIN / "rtdra-agent"),
            "--node-name", node.name,
            "--backend", node.backend,
            "--kubeconfig", str(self.agent_kubeconfig(node.name)),
            "--namespace", NAMESPACE,
            "--cdi-dir", str(self.cdi_dir(node.name)),
            "--state-dir", str(state),
        ]  # fmt: skip
        if node.cpus is not None and node.backend == "none":
            argv += ["--cpus", str(node.cpus)]
        if node.real and node.mode == "dra":
            argv += ["--mode", "dra", "--kubelet-root-dir", str(self.real[node.name].root_dir)]
        elif node.real:
            argv += ["--device-plugin-dir", str(self.real[node.name].device_plugin_dir)]
            if node.mode == "nri":  # its containerd offers NRI: the agent hears of containers there, no hook runs
                containerd = self.real[node.name].containerd
                assert containerd is not None
                argv += ["--mode", "nri", "--nri-socket", str(containerd.nri_socket)]
            else:
                argv += ["--mode", node.mode]
        else:  # simulated nodes must not register with this machine's real kubelet
            argv += ["--no-device-plugin"]
        self.spawn(f"agent-{node.name}", [*argv, *self.agent_args])

    def nas(self, node: str) -> dict[str, Any] | None:
        try:
            obj = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                "nas.rt.resource.example.com", "v1alpha1", NAMESPACE, "nodeallocationstates", node
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return dict(obj)

    def nas_ready(self, node: str) -> bool:
        proc = self.procs.get(f"agent-{node}")
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"agent of {node} exited ({proc.returncode}):\n{self.log_tail(f'agent-{node}')}")
        obj = self.nas(node)
        return obj is not None and obj.get("status") == "Ready"

    def dra_ready(self, node: str) -> bool:
        """A DRA-mode node: kubelet registered the agent's plugin and its pool is published (NAS NotReady)."""
        self.nas_ready(node)  # raises if the agent exited
        log = (self.logs / f"agent-{node}.log").read_text(errors="replace")
        registered = "kubelet registered the DRA plugin" in log
        slices = client.CustomObjectsApi(self.api).list_cluster_custom_object(
            "resource.k8s.io", "v1", "resourceslices", field_selector=f"spec.nodeName={node}"
        )
        return registered and bool(slices.get("items"))

    def ensure_device_class(self) -> None:
        """The DeviceClass of RT-DRA's CPUs (the cluster side's manifest, where applied, is the same object)."""
        body = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": dra.DEVICE_CLASS},
            "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{dra.DRIVER}"'}}]},
        }
        try:
            objects = client.CustomObjectsApi(self.api)
            objects.create_cluster_custom_object("resource.k8s.io", "v1", "deviceclasses", body)
        except ApiException as err:
            if err.status != 409:
                raise

    # -- the extender -------------------------------------------------------------------

    def extender_kubeconfig(self) -> Path:
        return self.cp.service_account_kubeconfig(NAMESPACE, "rtdra-extender", create=False)

    def start_extender(self, *, configure_scheduler: bool = True) -> None:
        if not self.extender_port:
            self.extender_port = free_port()
        self.spawn(
            "extender",
            [
                str(BIN / "rtdra-extender"),
                "--bind", f"127.0.0.1:{self.extender_port}",
                "--kubeconfig", str(self.extender_kubeconfig()),
                "--namespace", NAMESPACE,
                *self.extender_args,
            ],
        )  # fmt: skip
        url = f"http://127.0.0.1:{self.extender_port}/readyz"
        wait_for("extender ready", lambda: self._http_ok(url, "extender"), timeout=60)
        if configure_scheduler:
            self.cp.configure_scheduler(self.scheduler_config())

    def scheduler_config(self) -> dict[str, Any]:
        """The shipped KubeSchedulerConfiguration, calling this stack's extender."""
        config: dict[str, Any] = yaml.safe_load((MANIFESTS / "extender" / "scheduler-config-http.yaml").read_text())
        config["extenders"][0]["urlPrefix"] = f"http://127.0.0.1:{self.extender_port}"
        if self.dra_scoring:
            config["extenders"].append(self.dra_scoring_extender())
        return config

    def dra_scoring_extender(self) -> dict[str, Any]:
        """The shipped DRA scoring entry (manifests/scheduler/dra-scoring-config.yaml), over loopback HTTP."""
        shipped = yaml.safe_load((MANIFESTS / "scheduler" / "dra-scoring-config.yaml").read_text())
        [entry] = [e for e in shipped["extenders"] if e["urlPrefix"].endswith("/dra")]
        path = urllib.parse.urlsplit(entry["urlPrefix"]).path
        entry = {k: v for k, v in entry.items() if k not in ("enableHTTPS", "tlsConfig")}
        entry["urlPrefix"] = f"http://127.0.0.1:{self.extender_port}{path}"
        return entry

    def restart_extender(self, sig: int = signal.SIGKILL) -> None:
        """Kill the extender (hard by default) and start it again on the same port."""
        self.stop_process("extender", sig)
        self.start_extender(configure_scheduler=False)

    def _http_ok(self, url: str, name: str, context: ssl.SSLContext | None = None) -> bool:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # -- the webhook ----------------------------------------------------------------------

    def start_webhook(self) -> None:
        certs = self.workdir / "webhook-certs"
        subprocess.run(
            [str(BIN / "rtdra"), "certs", "--service", "rtdra-webhook", "--namespace", NAMESPACE,
             "--ip", "127.0.0.1", "--out", str(certs)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.webhook_port = free_port()
        self.spawn(
            "webhook",
            [
                str(BIN / "rtdra-webhook"),
                "--bind", f"127.0.0.1:{self.webhook_port}",
                "--tls-cert", str(certs / "tls.crt"),
                "--tls-key", str(certs / "tls.key"),
                "--kubeconfig", str(self.cp.service_account_kubeconfig(NAMESPACE, "rtdra-webhook", create=False)),
            ],
            env={"RTDRA_WEBHOOK_DRA_SCORING": "true"} if self.dra_scoring else None,
        )  # fmt: skip
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        url = f"https://127.0.0.1:{self.webhook_port}/readyz"
        wait_for("webhook ready", lambda: self._http_ok(url, "webhook", context), timeout=60)
        files = ["mutatingwebhookconfiguration.yaml"] + (["dra-scoring.yaml"] if self.dra_scoring else [])
        configs = [copy.deepcopy(yaml.safe_load((MANIFESTS / "webhook" / f).read_text())) for f in files]
        for config in configs:
            for hook in config["webhooks"]:
                hook["clientConfig"] = {
                    "url": f"https://127.0.0.1:{self.webhook_port}/mutate",
                    "caBundle": base64.b64encode((certs / "ca.crt").read_bytes()).decode(),
                }
        apply(self.api, configs)


@contextlib.contextmanager
def running_stack(
    workdir: Path, nodes: Sequence[NodeSpec], *, binaries: Any = None, **stack_args: Any
) -> Iterator[Stack]:
    """A new control plane (with kube-controller-manager) in ``workdir`` and a :class:`Stack` on it.

    What the demo, ``make up``, the benchmarks and the e2e tests all start; everything is stopped on exit,
    and the ``pids`` attribute of the stack lists every process either started (for leak checks).
    """
    cp = ControlPlane(workdir, binaries or ensure_binaries(), controller_manager=True)
    with cp:
        stack = Stack(cp, nodes, **stack_args)
        stack.pids.update(cp.all_pids())
        with stack:
            stack.pids.update({n: p.pid for n, p in stack.procs.items()})
            yield stack
            stack.pids.update({n: p.pid for n, p in stack.procs.items()})


__all__ = ["NAMESPACE", "NodeSpec", "Stack", "apply", "manifest_documents", "running_stack", "wait_for"]
