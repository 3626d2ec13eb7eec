"""Smoke tests proving the e2e control plane is the real thing: upstream
kube-scheduler binds pods, kube-apiserver serves CRDs with optimistic
concurrency, calls mutating webhooks over HTTPS, enforces RBAC, and everything
is gone after teardown."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from hack.cluster import ControlPlane, ControlPlaneError
from hack.k8sbins import Binaries
from hack.procs import pid_alive, pid_cmdline
from rtdra.certs import CertificateAuthority

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PAUSE = "registry.k8s.io/pause:3.10"  # never pulled: there is no kubelet


def wait_for(pred, timeout=30.0, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pod_body(name, labels=None, node_selector=None, cpu="100m", scheduler_name=None):
    spec = {"containers": [{"name": "c", "image": PAUSE, "resources": {"requests": {"cpu": cpu, "memory": "16Mi"}}}]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if scheduler_name:
        spec["schedulerName"] = scheduler_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


@pytest.fixture
def pods(kube_api):
    core = client.CoreV1Api(kube_api)
    made = []

    def create(body, namespace="default"):
        p = core.create_namespaced_pod(namespace, body)
        made.append((namespace, p.metadata.name))
        return p

    yield create
    for ns, name in made:
        try:
            core.delete_namespaced_pod(name, ns, grace_period_seconds=0)
        except ApiException as e:
            if e.status != 404:
                raise


# ----------------------------------------------------------------------------- scheduling
def test_scheduler_binds_pod_to_matching_node(kube_api, make_node, pods, unique_name):
    core = client.CoreV1Api(kube_api)
    group = unique_name("grp")
    a = make_node(labels={"e2e-group": group, "e2e-role": "a"})["metadata"]["name"]
    b = make_node(labels={"e2e-group": group, "e2e-role": "b"})["metadata"]["name"]
    node = core.read_node(b)
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
    assert not [t for t in (node.spec.taints or []) if t.key.startswith("node.kubernetes.io/")]

    name = unique_name("sched")
    pods(pod_body(name, node_selector={"e2e-group": group, "e2e-role": "b"}))
    bound = wait_for(lambda: core.read_namespaced_pod(name, "default").spec.node_name, what=f"pod {name} to be bound")
    assert bound == b != a
    p = core.read_namespaced_pod(name, "default")
    assert any(c.type == "PodScheduled" and c.status == "True" for c in p.status.conditions)

    # the scheduler really filters: more CPU than any node has -> Unschedulable
    big = unique_name("toobig")
    pods(pod_body(big, node_selector={"e2e-group": group}, cpu="64"))

    def unschedulable():
        conds = core.read_namespaced_pod(big, "default").status.conditions or []
        return [c for c in conds if c.type == "PodScheduled" and c.reason == "Unschedulable"]

    cond = wait_for(unschedulable, what="Unschedulable condition")[0]
    assert "Insufficient cpu" in (cond.message or "")
    assert core.read_namespaced_pod(big, "default").spec.node_name is None


def test_configure_scheduler_restarts_with_our_config(control_plane, kube_api, make_node, pods, unique_name):
    core = client.CoreV1Api(kube_api)
    group = unique_name("grp")
    n = make_node(labels={"e2e-group": group})["metadata"]["name"]
    old_pid = control_plane.pids["kube-scheduler"]
    try:
        path = control_plane.configure_scheduler(
            "apiVersion: kubescheduler.config.k8s.io/v1\n"
            "kind: KubeSchedulerConfiguration\n"
            "profiles:\n- schedulerName: rtdra-e2e-scheduler\n"
        )
        assert "rtdra-e2e-scheduler" in path.read_text()
        assert "leaderElect: false" in path.read_text()
        assert control_plane.pids["kube-scheduler"] != old_pid
        assert not pid_alive(old_pid)
        name = unique_name("prof")
        pods(pod_body(name, node_selector={"e2e-group": group}, scheduler_name="rtdra-e2e-scheduler"))
        assert wait_for(lambda: core.read_namespaced_pod(name, "default").spec.node_name) == n
    finally:
        control_plane.configure_scheduler(None)


# ----------------------------------------------------------------------------- CRDs
def test_crd_custom_objects_and_resource_version_conflict(kube_api, unique_name):
    ext = client.ApiextensionsV1Api(kube_api)
    co = client.CustomObjectsApi(kube_api)
    group, plural = "e2e.rtdra.example.com", unique_name("widgets").replace("-", "")
    crd_name = f"{plural}.{group}"
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": crd_name},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget" + plural[7:].title()},
                "versions": [
                    {
                        "name": "v1alpha1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {"count": {"type": "integer", "minimum": 0}},
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    try:

        def established():
            crd = ext.read_custom_resource_definition(crd_name)
            return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

        wait_for(established, what="CRD Established")

        def create():
            try:
                return co.create_namespaced_custom_object(
                    group,
                    "v1alpha1",
                    "default",
                    plural,
                    {
                        "apiVersion": f"{group}/v1alpha1",
                        "kind": "Widget" + plural[7:].title(),
                        "metadata": {"name": "w1"},
                        "spec": {"count": 1},
                    },
                )
            except ApiException as e:  # discovery of the new resource can lag a moment
                if e.status == 404:
                    return None
                raise

        obj = wait_for(create, what="custom object creation")
        rv1 = obj["metadata"]["resourceVersion"]

        # structural schema is enforced by the real apiserver
        bad = co.get_namespaced_custom_object(group, "v1alpha1", "default", plural, "w1")
        bad["spec"]["count"] = -1
        with pytest.raises(ApiException) as ei:
            co.replace_namespaced_custom_object(group, "v1alpha1", "default", plural, "w1", bad)
        assert ei.value.status == 422

        fresh = co.get_namespaced_custom_object(group, "v1alpha1", "default", plural, "w1")
        fresh["spec"]["count"] = 2
        updated = co.replace_namespaced_custom_object(group, "v1alpha1", "default", plural, "w1", fresh)
        assert updated["spec"]["count"] == 2
        assert updated["metadata"]["resourceVersion"] != rv1

        stale = dict(obj)
        stale["spec"] = {"count": 3}  # still carries rv1
        with pytest.raises(ApiException) as ei:
            co.replace_namespaced_custom_object(group, "v1alpha1", "default", plural, "w1", stale)
        assert ei.value.status == 409
        assert json.loads(ei.value.body)["reason"] == "Conflict"
        assert co.get_namespaced_custom_object(group, "v1alpha1", "default", plural, "w1")["spec"]["count"] == 2
    finally:
        ext.delete_custom_resource_definition(crd_name)


# ----------------------------------------------------------------------------- webhook
class _Recorder(BaseHTTPRequestHandler):
    seen: list  # set per server

    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append({"path": self.path, "review": review})
        obj = review["request"]["object"]
        ops = [{"op": "add", "path": "/metadata/labels/e2e-mutated", "value": "yes"}]
        if obj["metadata"].get("annotations"):
            ops.append({"op": "add", "path": "/metadata/annotations/e2e.rtdra~1webhook", "value": "called"})
        else:
            ops.append({"op": "add", "path": "/metadata/annotations", "value": {"e2e.rtdra/webhook": "called"}})
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": review["request"]["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": base64.b64encode(json.dumps(ops).encode()).decode(),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def webhook_server(tmp_path):
    ca = CertificateAuthority.create("e2e-webhook-ca")
    cert, key = ca.issue("127.0.0.1", server=True, ips=["127.0.0.1"], dns=["localhost"])
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv, ca.cert_pem
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_mutating_webhook_is_called_over_https(kube_api, webhook_server, pods, unique_name):
    srv, ca_pem = webhook_server
    port = srv.server_address[1]
    adm = client.AdmissionregistrationV1Api(kube_api)
    core = client.CoreV1Api(kube_api)
    cfg = unique_name("e2e-mutator")
    adm.create_mutating_webhook_configuration(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": cfg},
            "webhooks": [
                {
                    "name": "mutate.e2e.rtdra.example.com",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/mutate",
                        "caBundle": base64.b64encode(ca_pem).decode(),
                    },
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["pods"],
                            "scope": "Namespaced",
                        }
                    ],
                    "objectSelector": {"matchLabels": {"e2e-webhook": cfg}},
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                }
            ],
        }
    )
    try:
        # kube-apiserver picks new webhook configurations up through an informer:
        # retry with fresh pods until the first one goes through the webhook.
        def mutated_pod():
            p = pods(pod_body(unique_name("hooked"), labels={"e2e-webhook": cfg}))
            return p if (p.metadata.labels or {}).get("e2e-mutated") == "yes" else None

        p = wait_for(mutated_pod, timeout=30, interval=0.5, what="webhook to mutate a pod")
        assert p.metadata.annotations["e2e.rtdra/webhook"] == "called"
        stored = core.read_namespaced_pod(p.metadata.name, "default")
        assert stored.metadata.labels["e2e-mutated"] == "yes"

        reviews = [s for s in srv.seen if s["review"]["request"]["name"] == p.metadata.name]
        assert reviews, srv.seen
        req = reviews[-1]["review"]["request"]
        assert reviews[-1]["path"].startswith("/mutate")
        assert reviews[-1]["review"]["kind"] == "AdmissionReview"
        assert req["operation"] == "CREATE" and req["resource"]["resource"] == "pods"
        assert req["userInfo"]["username"] == "kubernetes-admin"

        # objectSelector honoured: an unlabelled pod is not sent to the webhook
        n_before = len(srv.seen)
        plain = pods(pod_body(unique_name("plain")))
        assert "e2e-mutated" not in (plain.metadata.labels or {})
        assert len(srv.seen) == n_before
    finally:
        adm.delete_mutating_webhook_configuration(cfg)


# ----------------------------------------------------------------------------- RBAC
def _status_of(fn, *args):
    try:
        fn(*args)
        return 200
    except ApiException as e:
        return e.status


def test_rbac_is_enforced_for_users_and_service_accounts(control_plane, kube_api, unique_name):
    rbac = client.RbacAuthorizationV1Api(kube_api)
    # Our own read-only ClusterRole: the built-in admin/edit/view are *aggregated*
    # ClusterRoles, filled by kube-controller-manager, which does not run here.
    reader = unique_name("e2e-reader")
    rbac.create_cluster_role(
        {
            "metadata": {"name": reader},
            "rules": [{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list", "watch"]}],
        }
    )
    try:
        _check_rbac(control_plane, rbac, reader, unique_name)
    finally:
        rbac.delete_cluster_role(reader)


def _check_rbac(control_plane, rbac, reader, unique_name):
    user = unique_name("e2e-nobody")
    kc = control_plane.make_user_kubeconfig(user, groups=["e2e-testers"])
    with control_plane.api_client(kc) as api:
        core = client.CoreV1Api(api)
        assert _status_of(core.list_namespaced_pod, "default") == 403
        assert _status_of(core.list_node) == 403
        rb = unique_name("view")
        rbac.create_namespaced_role_binding(
            "default",
            {
                "metadata": {"name": rb},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader},
                "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
            },
        )
        try:
            wait_for(
                lambda: _status_of(core.list_namespaced_pod, "default") == 200,
                what="RoleBinding to take effect",
            )
            assert _status_of(core.list_node) == 403  # still cluster-scoped denied
            assert _status_of(core.delete_namespaced_pod, "nope", "default") == 403  # read-only
        finally:
            rbac.delete_namespaced_role_binding(rb, "default")

    ns = unique_name("e2e-sa-ns")
    sa_kc = control_plane.service_account_kubeconfig(ns, "worker")
    with control_plane.api_client(sa_kc) as api:
        core = client.CoreV1Api(api)
        assert _status_of(core.list_namespaced_config_map, ns) == 403
        rbac.create_namespaced_role_binding(
            ns,
            {
                "metadata": {"name": "worker-view"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader},
                "subjects": [{"kind": "ServiceAccount", "name": "worker", "namespace": ns}],
            },
        )
        wait_for(
            lambda: _status_of(core.list_namespaced_config_map, ns) == 200,
            what="ServiceAccount RoleBinding to take effect",
        )
        assert _status_of(core.list_namespaced_config_map, "default") == 403


# ----------------------------------------------------------------------------- teardown
def _assert_gone(pids, workdir):
    for name, pid in pids.items():
        assert not pid_alive(pid), f"{name} (pid {pid}) still running"
    assert not Path(workdir).exists(), f"{workdir} left behind"


def test_context_manager_stop_leaves_nothing(k8s_binaries):
    workdir = Path(tempfile.mkdtemp(prefix="rtdra-cp2-")) / "cp"
    try:
        with ControlPlane(workdir, k8s_binaries) as cp:
            pids = cp.all_pids()
            assert set(pids) == {"etcd", "kube-apiserver", "kube-scheduler"}
            assert all(pid_alive(p) for p in pids.values())
            assert (cp.logs / "kube-apiserver.log").exists()
            with cp.api_client() as api:
                assert client.VersionApi(api).get_code().git_version == k8s_binaries.versions["kubernetes"]
            print(f"warm start: {cp.start_seconds:.1f}s")
        _assert_gone(pids, workdir)
    finally:
        workdir.parent.rmdir() if workdir.parent.exists() and not any(workdir.parent.iterdir()) else None


def test_cli_up_down_daemonizes_and_cleans_up(k8s_binaries, tmp_path):
    d = tmp_path / "cluster"
    env = dict(os.environ, RTDRA_K8S_BIN_DIR=str(k8s_binaries.kube_apiserver.parent))
    up = subprocess.run(
        [sys.executable, str(REPO / "hack" / "cluster.py"), "up", "--dir", str(d)],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
        env=env,
    )
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip().splitlines()[-1] == str(d / "kubeconfig")
        cp = ControlPlane.attach(d)
        pids = cp.all_pids()
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} and all(
            pid_alive(p) for p in pids.values()
        )  # outlived `up`
        with cp.api_client() as api:
            assert client.CoreV1Api(api).read_namespace("default").metadata.name == "default"
    finally:
        down = subprocess.run(
            [sys.executable, str(REPO / "hack" / "cluster.py"), "down", "--dir", str(d)],
            capture_output=True,
            check=False,
            text=True,
            timeout=120,
        )
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not any(pid_alive(p) for p in pids.values()), timeout=15, what="processes to exit")
    _assert_gone(pids, d)


def test_start_failure_raises_with_log_tail_and_cleans_up(k8s_binaries, tmp_path):
    fake = tmp_path / "kube-apiserver"
    fake.write_text("#!/bin/sh\necho 'E0000 fake apiserver: refusing to start (e2e)' >&2\nexit 3\n")
    fake.chmod(0o755)
    bins = Binaries(k8s_binaries.etcd, fake, k8s_binaries.kube_scheduler, {})
    workdir = tmp_path / "cp"
    cp = ControlPlane(workdir, bins, start_timeout=30)
    with pytest.raises(ControlPlaneError) as ei:
        cp.start()
    msg = str(ei.value)
    assert "kube-apiserver exited with code 3" in msg
    assert "refusing to start (e2e)" in msg  # the log tail is in the error
    assert cp.pids == {}
    assert not workdir.exists()
    # etcd, started before the failing apiserver, was killed too
    assert not any(str(workdir) in pid_cmdline(p) for p in _all_pids())


def _all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and pid_alive(int(d))]
