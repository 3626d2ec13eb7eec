#!/usr/bin/env python3
"""RT-DRA installed as a user installs it - the image, ``kubectl apply -k`` - on this machine's real node.

:func:`write_local_overlay` writes a kustomize overlay of the shipped ``manifests/`` for this
machine, and :class:`Install` carries out the install guide's steps with it (``rtdra certs`` for
the webhook's and the extender's serving certificates and kube-scheduler's client certificate,
``kubectl apply -k``, the ``caBundle``, kube-scheduler's extender configuration), then waits for
the Deployments and the DaemonSet to be Ready. The components then run in pods on the real node
(:mod:`hack.node`), from the image :mod:`hack.image` builds from the Dockerfile, each with nothing
but its ServiceAccount's projected token (``ControlPlane(service_accounts=True)``).

Why the overlay differs from a real cluster's install (and only there; the shipped manifests keep
what a real cluster needs, Services included):

- **no pod network, no kube-proxy here** (:mod:`hack.runtime`: a pod that is not ``hostNetwork``
  has no connectivity, ClusterIPs do not route). So the webhook, the extender and the agent run
  with ``hostNetwork: true`` on 127.0.0.1 ports; kube-apiserver calls the webhook by
  ``clientConfig.url`` and kube-scheduler the extender by ``urlPrefix``, both on 127.0.0.1; in-cluster
  clients are told the API server's loopback address (``KUBERNETES_SERVICE_HOST``/``PORT``, which
  kubelet would otherwise set to the unroutable ClusterIP); probes dial ``host: 127.0.0.1`` (by
  default kubelet dials the pod IP, which for a hostNetwork pod is the machine's own address);
- **one node**: one replica of each Deployment (two hostNetwork replicas cannot share a port), and
  updates replace it rather than start a new one beside it (``maxSurge: 0``) for the same reason;
- **the local image**: ``rt-dra.local/rt-dra:<version>`` imported into the node's containerd,
  ``imagePullPolicy: Never`` (there is no registry);
- **the node's own directories**: this node's containerd, kubelet and CDI directories live in its
  work dir (:class:`hack.node.RealNode`), so the agent's hostPaths point there, and its state and
  hook directories too (nothing is left on the host).
"""

from __future__ import annotations

import base64
import copy
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hack.cluster import ControlPlane  # noqa: E402
from hack.image import build_rtdra_image  # noqa: E402
from hack.images import ImageInfo  # noqa: E402
from hack.k8sbins import ensure_binaries  # noqa: E402
from hack.node import RealNode  # noqa: E402
from hack.procs import free_port  # noqa: E402
from hack.runtime import CRI_NAMESPACE  # noqa: E402
from hack.stack import KERNEL_LOCK, wait_for  # noqa: E402

BIN = Path(sys.executable).parent
NODE = "rt-node-0"
CHART = REPO / "charts" / "rt-dra"
RELEASE = "rt-dra"
METHODS = ("kustomize", "helm")
MANIFESTS = REPO / "manifests"
NAMESPACE = "rt-dra"

HEADER = """\
# A local overlay for this machine's real node, written by hack/install.py - NOT for a real cluster.
# It differs from manifests/ only where this machine does (no pod network, no kube-proxy, one node,
# no registry, the node's directories in its work dir): see hack/install.py's docstring.
"""


@dataclass(frozen=True)
class Local:
    """What the overlay needs to know about this machine."""

    image: str
    api_host: str
    api_port: int
    webhook_port: int
    extender_port: int
    #: hostPath of each of the agent DaemonSet's volumes that must not be the shipped one.
    agent_paths: Mapping[str, str]
    #: The hook directory: the same path on the host and in the agent's container.
    hook_dir: str


def _base(kind: str, name: str) -> dict[str, Any]:
    docs = [d for f in sorted(MANIFESTS.rglob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    [doc] = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    return doc


def _index(items: Sequence[Mapping[str, Any]], name: str) -> int:
    return next(i for i, item in enumerate(items) if item.get("name") == name)


def _server_patches(doc: Mapping[str, Any], port: int, local: Local) -> list[dict[str, Any]]:
    """hostNetwork on 127.0.0.1:port, one replica, the local image, the API server on the loopback."""
    c = "/spec/template/spec/containers/0"
    container = doc["spec"]["template"]["spec"]["containers"][0]
    bind = next(i for i, a in enumerate(container["args"]) if a.startswith("--bind="))
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/replicas", "value": 1},
        # One node and a fixed host port: an update's surge pod could never start beside the old one.
        {
            "op": "add",
            "path": "/spec/strategy",
            "value": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        },
        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
        {"op": "replace", "path": f"{c}/imagePullPolicy", "value": "Never"},
        {"op": "replace", "path": f"{c}/args/{bind}", "value": f"--bind=127.0.0.1:{port}"},
        {"op": "replace", "path": f"{c}/ports/0/containerPort", "value": port},
        {"op": "add", "path": f"{c}/readinessProbe/httpGet/host", "value": "127.0.0.1"},
        {"op": "add", "path": f"{c}/livenessProbe/httpGet/host", "value": "127.0.0.1"},
    ]
    return ops + _api_env(c, local)


def _api_env(c: str, local: Local) -> list[dict[str, Any]]:
    return [
        {"op": "add", "path": f"{c}/env/-", "value": {"name": "KUBERNETES_SERVICE_HOST", "value": local.api_host}},
        {"op": "add", "path": f"{c}/env/-", "value": {"name": "KUBERNETES_SERVICE_PORT", "value": str(local.api_port)}},
    ]


def _agent_patches(ds: Mapping[str, Any], local: Local) -> list[dict[str, Any]]:
    spec = ds["spec"]["template"]["spec"]
    c = "/spec/template/spec/containers/0"
    container = spec["containers"][0]
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": "/spec/template/spec/hostNetwork", "value": True},
        {"op": "add", "path": f"{c}/imagePullPolicy", "value": "Never"},
        *_api_env(c, local),
    ]
    for volume, path in sorted(local.agent_paths.items()):
        ops.append(
            {
                "op": "replace",
                "path": f"/spec/template/spec/volumes/{_index(spec['volumes'], volume)}/hostPath/path",
                "value": path,
            }
        )
    # The hook: the same path inside and outside (the runtime runs it on the host).
    hook_env = _index(container["env"], "RTDRA_AGENT_HOOK_DIR")
    ops.append({"op": "replace", "path": f"{c}/env/{hook_env}/value", "value": local.hook_dir})
    hook_mount = _index(container["volumeMounts"], "hook")
    ops.append({"op": "replace", "path": f"{c}/volumeMounts/{hook_mount}/mountPath", "value": local.hook_dir})
    hook_volume = _index(spec["volumes"], "hook")
    ops.append(
        {"op": "replace", "path": f"/spec/template/spec/volumes/{hook_volume}/hostPath/path", "value": local.hook_dir}
    )
    return ops


def _webhook_config_patches(config: Mapping[str, Any], local: Local) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(config["webhooks"]):  # by URL instead of the Service; the caBundle stays
        url = f"https://127.0.0.1:{local.webhook_port}{hook['clientConfig']['service']['path']}"
        ops.append({"op": "remove", "path": f"/webhooks/{i}/clientConfig/service"})
        ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/url", "value": url})
    return ops


def local_patches(
    local: Local, find: Callable[[str, str], Mapping[str, Any]] = _base
) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(kind, name, JSON patch) of each object the local install changes - the same for kustomize and helm.

    ``find(kind, name)``: the object to be patched (list indices in the patch are its): by default the
    one in ``manifests/``; the post-renderer passes the chart's rendering.
    """
    webhook, extender = find("Deployment", "rtdra-webhook"), find("Deployment", "rtdra-extender")
    return [
        ("Deployment", "rtdra-webhook", _server_patches(webhook, local.webhook_port, local)),
        ("Deployment", "rtdra-extender", _server_patches(extender, local.extender_port, local)),
        ("DaemonSet", "rtdra-agent", _agent_patches(find("DaemonSet", "rtdra-agent"), local)),
        ("MutatingWebhookConfiguration", "rtdra-webhook",
         _webhook_config_patches(find("MutatingWebhookConfiguration", "rtdra-webhook"), local)),
    ]  # fmt: skip


_GROUPS = {"Deployment": "apps", "DaemonSet": "apps", "MutatingWebhookConfiguration": "admissionregistration.k8s.io"}


def overlay(local: Local, base: str) -> dict[str, Any]:
    """The overlay's kustomization (``base``: the path of ``manifests/`` relative to the overlay)."""
    name, _, tag = local.image.rpartition(":")
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "images": [{"name": "rt-dra", "newName": name, "newTag": tag}],
        "patches": [
            {"target": {"group": _GROUPS[kind], "version": "v1", "kind": kind, "name": obj}, "patch": json.dumps(ops)}
            for kind, obj, ops in local_patches(local)
        ],
    }


def json_patch(doc: Any, ops: Sequence[Mapping[str, Any]]) -> Any:
    """Apply RFC 6902 ``add``/``replace``/``remove`` operations to ``doc`` in place (what the overlay uses)."""
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
            continue
        if op["op"] not in ("add", "replace"):
            raise ValueError(f"json_patch: {op['op']} is not supported")
        if isinstance(node, list):
            if last == "-":
                node.append(op["value"])
            elif op["op"] == "add":
                node.insert(int(last), op["value"])
            else:
                node[int(last)] = op["value"]
        else:
            if op["op"] == "replace" and last not in node:
                raise KeyError(f"json_patch: replace of missing {op['path']}")
            node[last] = op["value"]
    return doc


def post_render(local: Local, text: str) -> str:
    """helm's --post-renderer: the chart's objects with the local install's patches (see the module docstring)."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    by_name = {(d.get("kind"), d.get("metadata", {}).get("name")): d for d in docs}
    missing = [k for k in (("Deployment", "rtdra-webhook"), ("Deployment", "rtdra-extender"),
                           ("DaemonSet", "rtdra-agent"), ("MutatingWebhookConfiguration", "rtdra-webhook"))
               if k not in by_name]  # fmt: skip
    if missing:
        raise ValueError(f"post-render: the chart rendered no {missing}")
    for kind, name, ops in local_patches(local, lambda kind, name: by_name[(kind, name)]):
        json_patch(by_name[(kind, name)], ops)
    return yaml.safe_dump_all(docs, sort_keys=False, width=1000)


def write_local_overlay(directory: Path, local: Local) -> Path:
    """Write ``kustomization.yaml`` of the local overlay into ``directory``; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(MANIFESTS, directory)
    text = HEADER + yaml.safe_dump(overlay(local, base), sort_keys=False, width=1000)
    (directory / "kustomization.yaml").write_text(text)
    return directory


def scheduler_config(port: int, ca: Path, client_cert: Path, client_key: Path) -> dict[str, Any]:
    """The shipped ``manifests/extender/scheduler-config.yaml`` with this machine's extender URL and files."""
    config = yaml.safe_load((MANIFESTS / "extender" / "scheduler-config.yaml").read_text())
    config = copy.deepcopy(config)
    config.pop("clientConnection", None)  # the control plane's own kubeconfig
    ext = config["extenders"][0]
    ext["urlPrefix"] = f"https://127.0.0.1:{port}"
    ext["tlsConfig"] = {"caFile": str(ca), "certFile": str(client_cert), "keyFile": str(client_key)}
    return dict(config)


class Install:
    """A control plane (ServiceAccount tokens on), this machine as the real node, RT-DRA installed on it.

    ``method``: ``kustomize`` (``kubectl apply -k`` of the local overlay) or ``helm`` (``helm install``
    of charts/rt-dra, the same local changes made by ``--post-renderer``: :func:`post_render`).
    Stopping uninstalls first, then stops the node and the control plane.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        method: str = "kustomize",
        progress: Callable[[str], None] = lambda _m: None,
        binaries: Any = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"install method {method!r}: one of {', '.join(METHODS)}")
        self.workdir = Path(workdir).resolve()
        self.method = method
        self.progress = progress
        self._binaries = binaries
        self.cp: ControlPlane | None = None
        self.node: RealNode | None = None
        self.image: ImageInfo | None = None
        self.overlay = self.workdir / "overlay"
        self.pki = self.workdir / "pki"
        self.ports: dict[str, int] = {}
        self._lock: Any = None
        self.installed = False

    def __enter__(self) -> Install:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def kubectl_binary(self) -> Path:
        assert self.cp is not None and self.cp.binaries is not None and self.cp.binaries.kubectl is not None
        return self.cp.binaries.kubectl

    def env(self) -> dict[str, str]:
        assert self.cp is not None
        path = os.pathsep.join([str(self.kubectl_binary.parent), str(BIN), os.environ.get("PATH", "")])
        return {**os.environ, "PATH": path, "KUBECONFIG": str(self.cp.kubeconfig)}

    def run(self, *argv: str, timeout: float = 300) -> str:
        """A command of the install guide (``kubectl``/``rtdra`` on PATH, the admin's KUBECONFIG)."""
        done = subprocess.run(
            list(argv), env=self.env(), cwd=self.workdir, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        return done.stdout

    def kubectl(self, *args: str, timeout: float = 300) -> str:
        return self.run(str(self.kubectl_binary), *args, timeout=timeout)

    def start(self) -> Install:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock = open(KERNEL_LOCK, "a+")  # noqa: SIM115 - held until stop()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.progress("building (or reusing) the image from the Dockerfile")
        self.image = build_rtdra_image()
        self.progress("starting the control plane (ServiceAccount tokens on)")
        self.cp = ControlPlane(
            self.workdir / "cp", self._binaries or ensure_binaries(), controller_manager=True, service_accounts=True
        ).start()
        self.progress(f"starting this machine as the real node {NODE}")
        self.node = RealNode(self.cp, NODE, self.workdir / "node", progress=self.progress).start()
        assert self.node.containerd is not None
        self.progress(f"importing {self.image.name} into the node's containerd")
        self.node.containerd.ctr(
            "-n", CRI_NAMESPACE, "images", "import", "--local", str(self.image.tar_path), timeout=300
        )
        self.ports = {"webhook": free_port(), "extender": free_port()}
        self.install()

    def local(self) -> Local:
        assert self.node is not None and self.node.containerd is not None and self.image is not None
        assert self.cp is not None
        root = self.node.root_dir
        state, hook = self.workdir / "agent-state", self.workdir / "agent-hook"
        return Local(
            image=self.image.name,
            api_host="127.0.0.1",
            api_port=self.cp.ports["apiserver"],
            webhook_port=self.ports["webhook"],
            extender_port=self.ports["extender"],
            agent_paths={
                "cdi": str(self.node.cdi_dir),
                "nri": str(self.node.containerd.nri_socket.parent),
                "state": str(state),
                "plugins-registry": str(root / "plugins_registry"),
                "plugins": str(root / "plugins"),
            },
            hook_dir=str(hook),
        )

    def install(self) -> None:
        """The install guide's steps, by kustomize or helm."""
        assert self.cp is not None
        if self.method == "kustomize":
            write_local_overlay(self.overlay, self.local())
            self.progress("kubectl apply -k (the local overlay of manifests/)")
            self.kubectl("apply", "-k", str(self.overlay))
            self.installed = True
            self.certificates(patch_webhook=True)
        else:
            self.kubectl("create", "namespace", NAMESPACE)
            self.installed = True
            self.certificates(patch_webhook=False)
            self.progress("helm install (charts/rt-dra, the local changes by --post-renderer)")
            self.helm("install")
        self.wait_ready()
        self.progress("pointing kube-scheduler at the extender (TLS, kube-scheduler's client certificate)")
        self.cp.configure_scheduler(
            scheduler_config(
                self.ports["extender"],
                self.pki / "extender" / "ca.crt",
                self.pki / "scheduler-client" / "tls.crt",
                self.pki / "scheduler-client" / "tls.key",
            )
        )
        wait_for(f"NodeAllocationState of {NODE} Ready", self.nas_ready, timeout=120)

    def wait_ready(self) -> None:
        for what in ("deployment/rtdra-webhook", "deployment/rtdra-extender", "daemonset/rtdra-agent"):
            self.progress(f"waiting for {what}")
            self.kubectl("-n", NAMESPACE, "rollout", "status", what, "--timeout=300s", timeout=320)

    @property
    def helm_binary(self) -> Path:
        from hack.helmbin import ensure_helm  # noqa: PLC0415 - only the helm method builds helm

        return ensure_helm()

    def helm(self, command: str, *values: str) -> str:
        """``helm install`` or ``helm upgrade`` of the chart with the local image, caBundle and post-renderer."""
        assert self.image is not None
        local = self.workdir / "local.json"
        local.write_text(json.dumps(self.local().__dict__, default=dict))
        renderer = self.workdir / "post-render"
        renderer.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} post-render {local}\n")
        renderer.chmod(0o755)
        repo, _, tag = self.image.name.rpartition(":")
        ca_bundle = base64.b64encode((self.pki / "webhook" / "ca.crt").read_bytes()).decode()  # --print-ca-bundle
        return self.run(
            str(self.helm_binary), command, RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--set", f"image.repository={repo}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
            "--set", f"webhook.tls.caBundle={ca_bundle}", *values,
            "--post-renderer", str(renderer), "--wait", "--timeout", "5m",
        )  # fmt: skip

    def certificates(self, *, patch_webhook: bool) -> None:
        """docs/install.md steps 3 and 4 with ``--ip 127.0.0.1`` (what the local overlay dials)."""
        self.progress("rtdra certs: the webhook's and the extender's certificates, kube-scheduler's client certificate")
        patch = ["--patch-webhook", "rtdra-webhook"] if patch_webhook else []
        self.run(
            "rtdra", "certs", "--namespace", NAMESPACE, "--ip", "127.0.0.1", "--secret", "rtdra-webhook-tls",
            *patch, "--out", str(self.pki / "webhook"),
        )  # fmt: skip
        self.run(
            "rtdra", "certs", "--service", "rtdra-extender", "--namespace", NAMESPACE, "--ip", "127.0.0.1",
            "--secret", "rtdra-extender-tls", "--out", str(self.pki / "extender"),
        )  # fmt: skip
        self.run("rtdra", "certs", "--client", "kube-scheduler", "--out", str(self.pki / "scheduler-client"))
        self.kubectl(
            "-n", NAMESPACE, "create", "configmap", "rtdra-extender-client-ca",
            f"--from-file=ca.crt={self.pki / 'scheduler-client' / 'ca.crt'}",
        )  # fmt: skip

    def nas(self) -> dict[str, Any] | None:
        out = subprocess.run(
            [str(self.kubectl_binary), "-n", NAMESPACE, "get", "nas", NODE, "-o", "json"],
            env=self.env(), capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        return json.loads(out.stdout) if out.returncode == 0 else None

    def nas_ready(self) -> bool:
        nas = self.nas()
        return nas is not None and nas.get("status") == "Ready"

    def uninstall(self) -> None:
        if not self.installed:
            return
        if self.method == "kustomize":
            self.progress("kubectl delete -k (uninstall)")
            self.kubectl("delete", "-k", str(self.overlay), "--ignore-not-found", "--wait=true", timeout=300)
        else:
            self.progress("helm uninstall")
            self.run(str(self.helm_binary), "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "5m")
            # What the install guide made besides the chart: the Secrets, the client CA, the namespace.
            self.kubectl("delete", "namespace", NAMESPACE, "--wait=true", timeout=300)
        self.installed = False

    def stop(self) -> None:
        try:
            if self.installed and self.cp is not None:
                self.uninstall()
        finally:
            if self.node is not None:
                self.node.stop()
                self.node = None
            if self.cp is not None:
                self.cp.stop()
                self.cp = None
            if self._lock is not None:
                fcntl.flock(self._lock, fcntl.LOCK_UN)
                self._lock.close()
                self._lock = None


def main(argv: Sequence[str] | None = None) -> int:
    """``post-render LOCAL.json``: helm's post-renderer (stdin to stdout)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "post-render":
        print("usage: install.py post-render LOCAL.json", file=sys.stderr)
        return 2
    local = Local(**json.loads(Path(args[1]).read_text()))
    sys.stdout.write(post_render(local, sys.stdin.read()))
    return 0


__all__ = ["Install", "Local", "json_patch", "overlay", "post_render", "scheduler_config", "write_local_overlay"]


if __name__ == "__main__":
    sys.exit(main())
