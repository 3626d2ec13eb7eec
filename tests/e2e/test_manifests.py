"""What an operator applies, checked against the real kube-apiserver with the real ``kubectl``.

- ``manifests/`` (and ``manifests/scheduler/``) pass a server-side dry run and
  a real ``kubectl apply -k``, and ``kubectl get/describe nas`` print what
  docs/install.md promises.
- RBAC is sufficient and least-privilege: for each ServiceAccount a
  SubjectAccessReview over a grid of (verb, group, resource, namespace) must
  allow exactly what the code calls (extender/, webhook/, agent/,
  rtdra/store.py) - derived by reading the client calls, listed below.
- Both routes to the extender work over TLS with kube-scheduler's client
  certificate: a second kube-scheduler (option b) run from the built binary
  with the ConfigMap's configuration under its own ServiceAccount, and the
  default scheduler with the files docs/install.md prepares for option (a).
- The command blocks of docs/install.md marked ``<!-- tested: NAME -->`` are
  run verbatim (bash, in a scratch directory where ``manifests/`` is this
  repository's), so the install guide stays true.

The control planes here are this module's own: the manifests install cluster-wide
objects (a MutatingWebhookConfiguration, a ValidatingAdmissionPolicy) that
other tests' shared control plane should not see.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from hack.cluster import ControlPlane
from hack.k8sbins import Binaries
from hack.procs import free_port, pid_alive
from hack.stack import BIN, NodeSpec, Stack, wait_for
from rtdra import names
from rtdra.ledger import NodeLedger

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
INSTALL_DOC = REPO / "docs" / "install.md"
NS = names.DEFAULT_NAMESPACE
APPS_NS = "rt-apps"  # docs/install.md, step 6
SCHEDULER_NAME = "rt-dra-scheduler"
RT_TAINT = "rt.resource.example.com/rt-node=true:NoSchedule"  # docs/install.md, step 6
NODES = (NodeSpec("rt-node-1", "none", cpus=2), NodeSpec("rt-node-2", "none", cpus=2))
#: Where the second scheduler's Deployment mounts its Secret (manifests/scheduler/deployment.yaml).
SCHEDULER_TLS_MOUNT = "/etc/rt-dra-scheduler/tls"
#: Where option (a) keeps its files on a control-plane node (manifests/scheduler/kubeadm-config.yaml).
KUBEADM_DIR = "/etc/kubernetes/rtdra"


# --------------------------------------------------------------------------- helpers
def doc_blocks(text: str | None = None) -> dict[str, str]:
    """The ``sh`` blocks of docs/install.md preceded by ``<!-- tested: NAME -->``, by name."""
    text = INSTALL_DOC.read_text() if text is None else text
    return dict(re.findall(r"<!-- tested: ([\w-]+) -->\n```sh\n(.*?)```", text, flags=re.S))


@dataclass(frozen=True)
class Kubectl:
    """The built kubectl as the admin, from a scratch directory whose ``manifests`` is the repository's."""

    binary: Path
    kubeconfig: Path
    workdir: Path
    #: What the install steps left, for tests that run after later steps changed it.
    seen: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        path = os.pathsep.join([str(self.binary.parent), str(BIN), os.environ.get("PATH", "")])
        return {**os.environ, "PATH": path, "KUBECONFIG": str(self.kubeconfig)}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *args],
            check=False,
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        return done

    def run_doc(self, name: str) -> str:
        """Run the install guide's block ``name`` with bash -euo pipefail; return its output."""
        script = doc_blocks()[name]
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            check=False,
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"docs/install.md block {name!r} failed ({done.returncode}):\n{done.stderr}{done.stdout}"
            )
        return done.stdout + done.stderr

    def objects(self, *args: str) -> set[str]:
        return set(self(*args, "-o", "name").stdout.split())


def built_objects(kubectl: Kubectl, path: str) -> list[dict[str, Any]]:
    """What ``kubectl apply -k path`` sends, as kustomize builds it."""
    return [d for d in yaml.safe_load_all(kubectl("kustomize", path).stdout) if d]


def object_name(doc: Mapping[str, Any]) -> str:
    """``kubectl -o name`` of a manifest: ``kind[.group]/name``."""
    group = doc["apiVersion"].rpartition("/")[0]
    kind = doc["kind"].lower()
    return f"{kind}.{group}/{doc['metadata']['name']}" if group else f"{kind}/{doc['metadata']['name']}"


def materialise(api: client.ApiClient, kind: str, name: str, directory: Path) -> Path:
    """Write a Secret's or ConfigMap's keys as files, as a volume mount would."""
    core = client.CoreV1Api(api)
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "secret":
        for key, value in (core.read_namespaced_secret(name, NS).data or {}).items():
            (directory / key).write_bytes(base64.b64decode(value))
    else:
        for key, value in (core.read_namespaced_config_map(name, NS).data or {}).items():
            (directory / key).write_text(value)
    return directory


def remap(value: Any, old: str, new: str) -> Any:
    """Replace the path prefix ``old`` in every string of a nested configuration."""
    if isinstance(value, dict):
        return {k: remap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [remap(v, old, new) for v in value]
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old) :]
    return value


def events_about(core: client.CoreV1Api, namespace: str, pod: str) -> list[client.CoreV1Event]:
    return [e for e in core.list_namespaced_event(namespace).items if e.involved_object.name == pod]


def rt_pod(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "annotations": {f"{names.CONTAINER_PREFIX}app": "runtime=1ms,period=10ms"}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}], **spec},
    }


# --------------------------------------------------------------------------- fixtures
def _stop(cp: ControlPlane, pids: dict[str, int]) -> None:
    pids.update(cp.all_pids())
    cp.stop()
    with contextlib.suppress(OSError):
        cp.workdir.parent.rmdir()
    left = {n: p for n, p in pids.items() if pid_alive(p)}
    assert not left, f"processes survived teardown: {left}"


@pytest.fixture(scope="module")
def cluster(k8s_binaries: Binaries) -> Iterator[ControlPlane]:
    cp = ControlPlane(Path(tempfile.mkdtemp(prefix="rtdra-manifests-")) / "cp", k8s_binaries)
    cp.start()
    pids = cp.all_pids()
    try:
        yield cp
    finally:
        _stop(cp, pids)


def _kubectl(cp: ControlPlane, binaries: Binaries) -> Kubectl:
    if binaries.kubectl is None:
        pytest.fail("kubectl was not built (hack/controlplane/build.sh)")
    workdir = cp.workdir / "operator"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "manifests").symlink_to(MANIFESTS, target_is_directory=True)
    return Kubectl(binaries.kubectl, cp.kubeconfig, workdir)


@pytest.fixture(scope="module")
def kubectl(cluster: ControlPlane, k8s_binaries: Binaries) -> Kubectl:
    """The cluster after docs/install.md steps 2-4 (manifests applied, certificates made)."""
    k = _kubectl(cluster, k8s_binaries)
    for step in ("install", "webhook-certs", "extender-certs"):
        k.run_doc(step)
    k.seen["webhook"] = json.loads(k("get", "mutatingwebhookconfiguration", "rtdra-webhook", "-o", "json").stdout)
    return k


@dataclass
class RtStack:
    stack: Stack
    kubectl: Kubectl
    extender_port: int


@pytest.fixture(scope="module")
def rt(cluster: ControlPlane, kubectl: Kubectl) -> Iterator[RtStack]:
    """Agents on two simulated nodes, the extender over TLS as its Deployment runs it (the
    Secret and ConfigMap of step 4 mounted), the webhook setting ``schedulerName``, and
    docs/install.md steps 5b and 6 done. No second scheduler yet: the tests start it."""
    stack = Stack(cluster, NODES)
    try:
        stack.logs.mkdir(parents=True, exist_ok=True)
        for node in NODES:
            cluster.create_node(node.name, cpu=str(node.cpus))
            stack.start_agent(node)
        for node in NODES:
            wait_for(f"NodeAllocationState of {node.name} Ready", lambda n=node.name: stack.nas_ready(n))
        mounts = stack.workdir / "extender-mounts"
        tls = materialise(stack.api, "secret", "rtdra-extender-tls", mounts / "tls")
        client_ca = materialise(stack.api, "configmap", "rtdra-extender-client-ca", mounts / "client-ca")
        port = free_port()
        stack.spawn(
            "extender",
            [
                str(BIN / "rtdra-extender"),
                "--bind", f"127.0.0.1:{port}",
                "--kubeconfig", str(stack.extender_kubeconfig()),
                "--namespace", NS,
                "--tls-cert-file", str(tls / "tls.crt"),
                "--tls-key-file", str(tls / "tls.key"),
                "--client-ca-file", str(client_ca / "ca.crt"),
            ],
        )  # fmt: skip
        probe = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        probe.check_hostname = False  # the certificate names the Service; kube-scheduler checks it (serverName)
        probe.load_cert_chain(kubectl.workdir / "scheduler-client.crt", kubectl.workdir / "scheduler-client.key")
        wait_for(
            "extender ready over TLS", lambda: stack._http_ok(f"https://127.0.0.1:{port}/readyz", "extender", probe)
        )
        # There is no cluster network here: the webhook is registered by URL instead of the Service.
        kubectl("delete", "mutatingwebhookconfiguration", "rtdra-webhook")
        with pytest.MonkeyPatch.context() as env:  # as `kubectl set env` in step 5b does to the Deployment
            env.setenv("RTDRA_WEBHOOK_SCHEDULER_NAME", SCHEDULER_NAME)
            env.setenv("RTDRA_WEBHOOK_TOLERATION", RT_TAINT)  # step 6
            stack.start_webhook()
        for step in ("scheduler-b", "namespaces", "rt-nodes"):
            kubectl.run_doc(step)
        yield RtStack(stack, kubectl, port)
    finally:
        stack.stop()


def scheduler_config_b(rt: RtStack) -> dict[str, Any]:
    """The ConfigMap's configuration as the Deployment's kube-scheduler gets it, with what
    differs on this host: the API credentials (in-cluster there: the ServiceAccount's token
    here too), the Secret mount, and the extender's address (no cluster DNS here)."""
    built = built_objects(rt.kubectl, "manifests/scheduler/")
    configmap = next(d for d in built if d["kind"] == "ConfigMap")
    deployment = next(d for d in built if d["kind"] == "Deployment")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]  # kustomize's hashed name, wired in
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    mounts = rt.stack.workdir / "scheduler-mounts"
    secret = materialise(rt.stack.api, "secret", "rtdra-scheduler-client-tls", mounts / "tls")
    config = remap(config, SCHEDULER_TLS_MOUNT, str(secret))
    config["clientConnection"] = {
        "kubeconfig": str(rt.stack.cp.service_account_kubeconfig(NS, "rtdra-scheduler", create=False))
    }
    extender = config["extenders"][0]
    assert extender["urlPrefix"] == "https://rtdra-extender.rt-dra.svc:8888"
    extender["urlPrefix"] = f"https://127.0.0.1:{rt.extender_port}"
    return config


def start_second_scheduler(rt: RtStack) -> None:
    config = scheduler_config_b(rt)
    path = rt.stack.workdir / "rt-dra-scheduler.yaml"
    path.write_text(yaml.safe_dump(config))
    kubeconfig = config["clientConnection"]["kubeconfig"]
    port = free_port()
    assert rt.kubectl.binary.parent == Path(rt.stack.cp.binaries.kube_scheduler).parent  # one build
    rt.stack.spawn(
        SCHEDULER_NAME,
        [
            str(rt.stack.cp.binaries.kube_scheduler),
            f"--config={path}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--v=2",
        ],
    )
    probe = ssl.create_default_context()
    probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE  # its self-signed serving certificate
    wait_for(
        "rt-dra-scheduler healthy", lambda: rt.stack._http_ok(f"https://127.0.0.1:{port}/readyz", SCHEDULER_NAME, probe)
    )


# --------------------------------------------------------------------------- manifests
def test_every_manifest_passes_a_server_side_dry_run(kubectl: Kubectl) -> None:
    for path in ("manifests/", "manifests/scheduler/"):
        expected = {object_name(d) for d in built_objects(kubectl, path)}
        assert kubectl.objects("apply", "-k", path, "--dry-run=server") == expected


def test_a_fresh_cluster_refuses_the_dry_run_until_the_namespace_exists(
    k8s_binaries: Binaries,
) -> None:
    """Why docs/install.md applies namespace.yaml before the dry run (and that it then suffices)."""
    with ControlPlane(Path(tempfile.mkdtemp(prefix="rtdra-fresh-")) / "cp", k8s_binaries) as cp:
        pids = cp.all_pids()
        k = _kubectl(cp, k8s_binaries)
        first = k("apply", "-k", "manifests/", "--dry-run=server", check=False)
        assert first.returncode != 0
        assert 'namespaces "rt-dra" not found' in first.stderr
        k("apply", "-f", "manifests/namespace.yaml")
        assert k("apply", "-k", "manifests/", "--dry-run=server", check=False).returncode == 0
    _stop(cp, pids)


def test_kubectl_apply_creates_every_object(kubectl: Kubectl) -> None:
    for path in ("manifests/", "manifests/scheduler/"):
        expected = {object_name(d) for d in built_objects(kubectl, path)}
        if path == "manifests/scheduler/":
            kubectl("apply", "-k", path)  # idempotent; step 5b may not have run in this session
        assert kubectl.objects("get", "-k", path) == expected


def test_the_certificates_are_where_the_deployments_mount_them(kubectl: Kubectl) -> None:
    objects = kubectl.objects("-n", NS, "get", "secrets,configmaps")
    for wanted in ("secret/rtdra-webhook-tls", "secret/rtdra-extender-tls", "configmap/rtdra-extender-client-ca"):
        assert wanted in objects
    webhook = kubectl.seen["webhook"]
    ca = (kubectl.workdir / "rtdra-webhook-pki" / "ca.crt").read_bytes()
    # every entry: pods, and DRA mode's claims and claim templates
    bundles = [w["clientConfig"]["caBundle"] for w in webhook["webhooks"]]
    assert bundles == [base64.b64encode(ca).decode()] * 3


# --------------------------------------------------------------------------- the ledger through kubectl
def test_kubectl_get_nas_shows_the_printer_columns(rt: RtStack) -> None:
    output = rt.kubectl.run_doc("nas")
    table = output.split("\n\n", 1)[0] if "Name:" in output else output
    lines = [line for line in table.splitlines() if line.strip()]
    header = lines[0].split()
    assert header == ["NAME", "CPUS", "RESERVED", "PODS", "READY", "AGE"]
    rows = {line.split()[0]: line.split()[1:5] for line in lines[1:] if not line.startswith("Name:")}
    for node in NODES:
        obj = rt.stack.nas(node.name) or {}
        ledger = NodeLedger.from_nas(obj)
        assert rows[node.name] == [str(len(ledger.cpus)), obj["summary"]["reserved"], str(len(ledger.pods)), "Ready"]
        assert re.fullmatch(r"\d+\.\d%", obj["summary"]["reserved"])


def test_kubectl_describe_nas_by_short_name(rt: RtStack) -> None:
    out = rt.kubectl("-n", NS, "describe", "nas/rt-node-1").stdout
    assert re.search(r"^Name:\s+rt-node-1$", out, re.M)
    assert re.search(r"^Kind:\s+NodeAllocationState$", out, re.M)
    assert "Allocatable Cpuset" in out
    assert re.search(r"^Status:\s+Ready$", out, re.M)


# --------------------------------------------------------------------------- option (b): a second scheduler
def test_a_second_scheduler_binds_rt_pods_through_the_extender_and_the_default_scheduler_ignores_them(
    rt: RtStack,
) -> None:
    core = client.CoreV1Api(rt.stack.api)
    core.create_namespaced_pod(APPS_NS, rt_pod("rt-b"))
    pod = core.read_namespaced_pod("rt-b", APPS_NS)
    assert pod.spec.scheduler_name == SCHEDULER_NAME  # set by the webhook (RTDRA_WEBHOOK_SCHEDULER_NAME)
    assert pod.spec.containers[0].resources.limits[names.DL_RESOURCE] == "1"
    assert [t.key for t in pod.spec.tolerations or [] if t.key.startswith(names.DOMAIN)] == [RT_TAINT.partition("=")[0]]
    # The default scheduler is at work (it places an ordinary pod created after the RT pod) ...
    core.create_namespaced_pod(
        APPS_NS, {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "a", "image": "x"}]}}
    )
    wait_for(
        "plain pod bound by the default scheduler", lambda: core.read_namespaced_pod("plain", APPS_NS).spec.node_name
    )
    # ... and leaves the RT pod alone: not bound, not even tried.
    assert core.read_namespaced_pod("rt-b", APPS_NS).spec.node_name is None
    assert not events_about(core, APPS_NS, "rt-b")

    start_second_scheduler(rt)
    bound = wait_for("rt-b bound", lambda: core.read_namespaced_pod("rt-b", APPS_NS).spec.node_name, timeout=60)
    pod = core.read_namespaced_pod("rt-b", APPS_NS)
    allocation = json.loads(pod.metadata.annotations[names.ALLOCATION])  # the extender bound it
    assert allocation["node"] == bound
    assert bound in {n.name for n in NODES}
    held = NodeLedger.from_nas(rt.stack.nas(bound) or {}).pods[pod.metadata.uid]
    assert list(held.cpus_of("app")) == allocation["containers"]["app"]["cpus"]
    scheduled = [e for e in events_about(core, APPS_NS, "rt-b") if e.reason == "Scheduled"]
    assert scheduled and {e.reporting_component for e in scheduled} == {SCHEDULER_NAME}
    lease = client.CoordinationV1Api(rt.stack.api).read_namespaced_lease(SCHEDULER_NAME, NS)
    assert lease.spec.holder_identity  # leader election works with the manifests' RBAC
    print("\n$ kubectl -n rt-dra get nas\n" + rt.kubectl("-n", NS, "get", "nas").stdout)
    print("$ kubectl -n rt-dra describe nas/rt-node-1\n" + rt.kubectl("-n", NS, "describe", "nas/rt-node-1").stdout)


# --------------------------------------------------------------------------- option (a): the default scheduler
def test_the_option_a_files_route_dl_pods_through_the_extender_over_tls(rt: RtStack) -> None:
    rt.kubectl.run_doc("scheduler-a-files")
    files = rt.kubectl.workdir / "rtdra-scheduler-files"
    assert sorted(p.name for p in files.iterdir()) == [
        "extender-ca.crt",
        "scheduler-client.crt",
        "scheduler-client.key",
        "scheduler-config.yaml",
    ]
    config = yaml.safe_load((files / "scheduler-config.yaml").read_text())
    extender = config["extenders"][0]
    cluster_ip = rt.kubectl("-n", NS, "get", "service", "rtdra-extender", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert extender["urlPrefix"] == f"https://{cluster_ip}:8888"
    assert extender["tlsConfig"]["serverName"] == "rtdra-extender.rt-dra.svc"
    assert config["clientConnection"]["kubeconfig"] == "/etc/kubernetes/scheduler.conf"
    # As on a kubeadm control-plane node (files at /etc/kubernetes/rtdra), but here:
    config = remap(config, KUBEADM_DIR, str(files))
    config.pop("clientConnection")  # configure_scheduler fills in this host's scheduler.conf
    config["extenders"][0]["urlPrefix"] = f"https://127.0.0.1:{rt.extender_port}"  # no kube-proxy here
    rt.stack.cp.configure_scheduler(config)
    try:
        core = client.CoreV1Api(rt.stack.api)
        # Not in an opted-in namespace, so no webhook: the user's annotation and the opt-in resource.
        core.create_namespace({"metadata": {"name": "opt-a"}})
        body = rt_pod("rt-a")
        body["spec"]["containers"][0]["resources"] = {"limits": {names.DL_RESOURCE: "1"}}
        core.create_namespaced_pod("opt-a", body)
        node = wait_for("rt-a bound", lambda: core.read_namespaced_pod("rt-a", "opt-a").spec.node_name, timeout=60)
        pod = core.read_namespaced_pod("rt-a", "opt-a")
        assert json.loads(pod.metadata.annotations[names.ALLOCATION])["node"] == node
    finally:
        rt.stack.cp.configure_scheduler(None)


# --------------------------------------------------------------------------- RBAC
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
#: (group, resource[/subresource], namespaced)
RESOURCES = (
    ("", "pods", True),
    ("", "pods/binding", True),
    ("", "pods/status", True),
    ("", "pods/eviction", True),
    ("", "secrets", True),
    ("", "configmaps", True),
    ("", "events", True),
    ("", "serviceaccounts/token", True),
    ("events.k8s.io", "events", True),
    ("coordination.k8s.io", "leases", True),
    (names.NAS_GROUP, names.NAS_PLURAL, True),
    (names.CLAIM_PARAMETERS_GROUP, names.CLAIM_PARAMETERS_PLURAL, True),
    ("", "nodes", False),
    ("resource.k8s.io", "resourceslices", False),
    ("resource.k8s.io", "resourceclaims", True),
    ("", "namespaces", False),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", False),
    ("rbac.authorization.k8s.io", "clusterroles", False),
)
#: The driver namespace, any other namespace, and "" = all namespaces (or cluster scope).
NAMESPACES = (NS, APPS_NS, "")
Access = tuple[str, str, str, str]  # verb, group, resource, namespace


def grid(verbs: tuple[str, ...], group: str, resource: str, namespaces: tuple[str, ...] = NAMESPACES) -> set[Access]:
    return {(v, group, resource, n) for v in verbs for n in namespaces}


def allowed(api: client.ApiClient, account: str, access: Access, name: str = "") -> bool:
    verb, group, resource, namespace = access
    resource, _, subresource = resource.partition("/")
    attributes = {"verb": verb, "group": group, "resource": resource, "subresource": subresource}
    if namespace:
        attributes["namespace"] = namespace
    if name:
        attributes["name"] = name
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{NS}:{account}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated"],
            "resourceAttributes": attributes,
        },
    }
    return bool(client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed)


def granted(api: client.ApiClient, account: str) -> set[Access]:
    """Everything in the grid the account may do, as the API server's authorizer decides."""
    accesses = {
        (verb, group, resource, namespace)
        for group, resource, namespaced in RESOURCES
        for verb in VERBS
        for namespace in (NAMESPACES if namespaced else ("",))
    }
    return {a for a in accesses if allowed(api, account, a)}


#: extender/bind.py (read_namespaced_pod, create_namespaced_pod_binding - the Binding carries the
#: allocation annotation), extender/reconcile.py (list/watch pods in all namespaces, patch to requeue,
#: read), extender/claims.py (list/watch RtClaimParameters cluster-wide, get on a cache miss),
#: rtdra/store.py through extender/cache.py and bind (list + watch, get + replace = update) in the
#: driver namespace only; extender/heartbeats.py (list + watch the agents' Leases there); extender/dra.py
#: (--dra-scoring: list + watch ResourceSlices, list + watch ResourceClaims cluster-wide, get on a miss).
EXTENDER_NEEDS = (
    grid(("get", "list", "watch", "patch"), "", "pods")
    | grid(("create",), "", "pods/binding")
    | grid(("get", "list", "watch"), names.CLAIM_PARAMETERS_GROUP, names.CLAIM_PARAMETERS_PLURAL)
    | grid(("get", "list", "watch", "update"), names.NAS_GROUP, names.NAS_PLURAL, (NS,))
    | grid(("get", "list", "watch"), "coordination.k8s.io", "leases", (NS,))
    | grid(("list", "watch"), "resource.k8s.io", "resourceslices", ("",))
    | grid(("get", "list", "watch"), "resource.k8s.io", "resourceclaims")
)
#: webhook/lookups.py: get_namespaced_custom_object(RtClaimParameters) in the pod's namespace, read_namespace.
WEBHOOK_NEEDS = grid(("get",), names.CLAIM_PARAMETERS_GROUP, names.CLAIM_PARAMETERS_PLURAL) | {
    ("get", "", "namespaces", "")
}
#: agent/kubeapi.py: create_namespaced_event in the pod's namespace; rtdra/store.py through ApiStore:
#: get, create, and replace (update) of its node's NAS in the driver namespace - no list, no watch;
#: rtdra/leases.py: get, create and replace (update) of its Lease there.
#: DRA mode: agent/dra/slices.py (list by field selector, create, replace = update, delete its
#: ResourceSlices; read_node for the owner reference), agent/kubeapi.py ClaimReader (get a ResourceClaim).
AGENT_NEEDS = (
    grid(("create",), "", "events")
    | grid(("get", "create", "update"), names.NAS_GROUP, names.NAS_PLURAL, (NS,))
    | grid(("get", "create", "update"), "coordination.k8s.io", "leases", (NS,))
    | grid(("list", "create", "update", "delete"), "resource.k8s.io", "resourceslices", ("",))
    | grid(("get",), "resource.k8s.io", "resourceclaims")
    | {("get", "", "nodes", "")}
)


@pytest.fixture(scope="module")
def rbac_api(kubectl: Kubectl, cluster: ControlPlane) -> Iterator[client.ApiClient]:
    with cluster.api_client() as api:
        yield api


def test_the_extender_may_do_exactly_what_its_code_does(rbac_api: client.ApiClient) -> None:
    assert granted(rbac_api, "rtdra-extender") == EXTENDER_NEEDS


def test_the_webhook_may_do_exactly_what_its_code_does(rbac_api: client.ApiClient) -> None:
    assert granted(rbac_api, "rtdra-webhook") == WEBHOOK_NEEDS


def test_the_agent_may_do_what_its_code_does_and_nothing_dangerous(rbac_api: client.ApiClient) -> None:
    got = granted(rbac_api, "rtdra-agent")
    assert got >= AGENT_NEEDS
    dangerous = (
        grid(("create",), "", "pods/binding")
        | grid(("get", "list", "patch", "delete"), "", "pods")
        | grid(("get", "list"), "", "secrets")
        | grid(("delete", "deletecollection", "patch"), names.NAS_GROUP, names.NAS_PLURAL)
        | {("update", "", "nodes", ""), ("patch", "", "nodes", "")}
    )
    assert not got & dangerous, sorted(got & dangerous)
    # Writing another node's NAS is refused by the ValidatingAdmissionPolicy, not RBAC:
    # tests/e2e/test_agent_api.py proves that with node-bound tokens.


def test_the_agent_may_do_exactly_what_its_code_does(rbac_api: client.ApiClient) -> None:
    assert granted(rbac_api, "rtdra-agent") == AGENT_NEEDS


def test_the_second_scheduler_has_the_kube_scheduler_roles_and_its_own_lease_only(
    rbac_api: client.ApiClient, kubectl: Kubectl
) -> None:
    kubectl("apply", "-k", "manifests/scheduler/")
    account = "rtdra-scheduler"
    for access in grid(("create",), "", "pods/binding") | grid(("get", "list", "watch"), "", "pods"):
        assert allowed(rbac_api, account, access), access
    assert allowed(rbac_api, account, ("get", "", "configmaps", "kube-system"), "extension-apiserver-authentication")
    for verb in ("get", "update"):
        assert allowed(rbac_api, account, (verb, "coordination.k8s.io", "leases", NS), SCHEDULER_NAME)
        assert not allowed(rbac_api, account, (verb, "coordination.k8s.io", "leases", NS), "other-lease")
    for access in (
        grid(("get", "list"), "", "secrets")
        | grid(("create", "update", "patch", "delete"), names.NAS_GROUP, names.NAS_PLURAL)
        | {("delete", "", "nodes", "")}
    ):
        assert not allowed(rbac_api, account, access), access


def test_the_extender_cannot_delete_pods_or_read_secrets(rbac_api: client.ApiClient) -> None:
    got = granted(rbac_api, "rtdra-extender")
    assert not {a for a in got if a[0] in ("delete", "deletecollection")}
    assert not {a for a in got if a[2] == "secrets"}


def test_the_webhook_writes_nothing(rbac_api: client.ApiClient) -> None:
    got = granted(rbac_api, "rtdra-webhook")
    assert {a[0] for a in got} == {"get"}


# --------------------------------------------------------------------------- uninstall
def test_uninstall_removes_everything_it_installed(k8s_binaries: Binaries) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rtdra-uninstall-")) / "cp"
    cp = ControlPlane(workdir, k8s_binaries, controller_manager=True)  # namespace deletion needs its controller
    cp.start()
    pids = cp.all_pids()
    try:
        k = _kubectl(cp, k8s_binaries)
        k.run_doc("install")
        k("apply", "-k", "manifests/scheduler/")
        installed = k.objects("get", "-k", "manifests/") | k.objects("get", "-k", "manifests/scheduler/")
        assert "namespace/rt-dra" in installed
        k.run_doc("uninstall")
        left = k("get", "-k", "manifests/", "--ignore-not-found", "-o", "name").stdout.split()
        left += k("get", "-k", "manifests/scheduler/", "--ignore-not-found", "-o", "name").stdout.split()
        assert left == []
        crds = k("get", "crd", "-o", "name").stdout
        assert names.NAS_GROUP not in crds and names.CLAIM_PARAMETERS_PLURAL not in crds
    finally:
        _stop(cp, pids)
        shutil.rmtree(workdir.parent, ignore_errors=True)
