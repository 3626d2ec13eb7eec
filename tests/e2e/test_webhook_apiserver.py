"""The webhook against the real kube-apiserver (v1.37, RBAC on).

The webhook runs as deployed - ``rtdra-webhook`` under gunicorn over HTTPS -
on 127.0.0.1, with a certificate from ``rtdra certs --ip 127.0.0.1``, reading
the API with the ServiceAccount and RBAC of ``manifests/webhook/rbac.yaml``.
It is registered from ``manifests/webhook/mutatingwebhookconfiguration.yaml``
(only ``clientConfig`` switched to ``url:``, since there is no Service
network here), with its caBundle patched in by ``rtdra certs --patch-webhook``;
so the namespaceSelector and the matchConditions CEL expression are the
shipped ones. Pods are created through the API and come back mutated or
denied with our message. A certificate without the right SAN is refused by
the apiserver itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from kubernetes import client, utils
from kubernetes.client.exceptions import ApiException

from rtdra import names
from rtdra.cli import main as rtdra_main

pytestmark = [
    pytest.mark.e2e,
    # /healthz of the wrong-SAN server is polled without verification (its certificate is wrong on purpose)
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]

REPO = Path(__file__).resolve().parents[2]
PAUSE = "registry.k8s.io/pause:3.10"  # never pulled: there is no kubelet
RT = "rt.resource.example.com/container.app"


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.3, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class WebhookProcess:
    def __init__(self, cert_dir: Path, log: Path, kubeconfig: Path | None, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = cert_dir / "ca.crt"
        self.log = log
        argv = [
            sys.executable,
            "-m",
            "webhook.cli",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--tls-cert",
            str(cert_dir / "tls.crt"),
            "--tls-key",
            str(cert_dir / "tls.key"),
            "--workers",
            "1",
            "--threads",
            "4",
        ]
        if kubeconfig is not None:
            argv += ["--kubeconfig", str(kubeconfig)]
        self.process = subprocess.Popen(
            argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **env}
        )

    def wait_ready(self) -> None:
        def healthy() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"rtdra-webhook exited: {self.log.read_text()}")
            try:
                # verify=False: this webhook's certificate may deliberately lack 127.0.0.1
                return requests.get(self.url + "/healthz", verify=False, timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(healthy, timeout=20, what="rtdra-webhook to answer /healthz")

    def admissions(self) -> float:
        text = requests.get(self.url + "/metrics", verify=str(self.ca), timeout=5).text
        return sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("rtdra_webhook_admissions_total{")
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def _load(path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


def _create(fn: Callable[[], Any]) -> bool:
    try:
        fn()
    except ApiException as err:
        if err.status != 409:
            raise
        return False
    return True


def pod(name: str, annotations: dict[str, str] | None = None, containers: tuple[str, ...] = ("app",)) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"containers": [{"name": c, "image": PAUSE} for c in containers]},
    }


@pytest.fixture(scope="module")
def env(control_plane: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """CRD, RBAC, namespaces, the running webhook and its registration; all removed afterwards."""
    work = tmp_path_factory.mktemp("webhook-e2e")
    suffix = os.urandom(3).hex()
    api = control_plane.api_client()
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    ext = client.ApiextensionsV1Api(api)
    adm = client.AdmissionregistrationV1Api(api)
    cleanup: list[Callable[[], Any]] = []
    server = None
    try:
        [crd] = _load("manifests/crds/rtclaimparameters.yaml")
        if _create(lambda: ext.create_custom_resource_definition(crd)):
            cleanup.append(lambda: ext.delete_custom_resource_definition(crd["metadata"]["name"]))

        def established() -> bool:
            got = ext.read_custom_resource_definition(crd["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True" for c in got.status.conditions or [])

        wait_for(established, what="the RtClaimParameters CRD")

        # the webhook's identity: exactly the shipped RBAC (cluster-scoped names made unique)
        sa_kubeconfig = control_plane.service_account_kubeconfig(names.DEFAULT_NAMESPACE, "rtdra-webhook")
        for doc in _load("manifests/webhook/rbac.yaml"):
            if doc["kind"] == "ClusterRole":
                doc["metadata"]["name"] += f"-{suffix}"
                rbac.create_cluster_role(doc)
                cleanup.append(lambda n=doc["metadata"]["name"]: rbac.delete_cluster_role(n))
            elif doc["kind"] == "ClusterRoleBinding":
                doc["metadata"]["name"] += f"-{suffix}"
                doc["roleRef"]["name"] += f"-{suffix}"
                rbac.create_cluster_role_binding(doc)
                cleanup.append(lambda n=doc["metadata"]["name"]: rbac.delete_cluster_role_binding(n))

        enabled, plain = f"rt-on-{suffix}", f"rt-off-{suffix}"
        core.create_namespace({"metadata": {"name": enabled, "labels": {names.NAMESPACE_OPT_IN_LABEL: "true"}}})
        core.create_namespace({"metadata": {"name": plain}})

        cert_dir = work / "certs"
        assert (
            rtdra_main(
                [
                    "certs",
                    "--service",
                    "rtdra-webhook",
                    "--namespace",
                    "rt-dra",
                    "--ip",
                    "127.0.0.1",
                    "--out",
                    str(cert_dir),
                ]
            )
            == 0
        )
        server = WebhookProcess(
            cert_dir, work / "webhook.log", sa_kubeconfig, {"RTDRA_WEBHOOK_VERIFY_NAMESPACE": "true"}
        )
        server.wait_ready()

        [config] = _load("manifests/webhook/mutatingwebhookconfiguration.yaml")
        config["metadata"]["name"] = f"rtdra-webhook-{suffix}"
        hook = config["webhooks"][0]
        hook["clientConfig"] = {"url": server.url + "/mutate"}
        adm.create_mutating_webhook_configuration(config)
        cleanup.append(lambda: adm.delete_mutating_webhook_configuration(config["metadata"]["name"]))
        # the caBundle, the way an operator sets it (re-issues tls.crt from the same CA; the server reloads it)
        assert (
            rtdra_main(
                [
                    "certs",
                    "--service",
                    "rtdra-webhook",
                    "--namespace",
                    "rt-dra",
                    "--ip",
                    "127.0.0.1",
                    "--out",
                    str(cert_dir),
                    "--kubeconfig",
                    str(control_plane.kubeconfig),
                    "--patch-webhook",
                    config["metadata"]["name"],
                ]
            )
            == 0
        )
        stored = adm.read_mutating_webhook_configuration(config["metadata"]["name"])
        assert base64.b64decode(stored.webhooks[0].client_config.ca_bundle) == (cert_dir / "ca.crt").read_bytes()

        # the apiserver picks configurations up through an informer: wait for the first mutation
        def mutated() -> bool:
            name = f"probe-{os.urandom(3).hex()}"
            made = core.create_namespaced_pod(enabled, pod(name, {RT: "runtime=1ms,period=10ms"}))
            core.delete_namespaced_pod(name, enabled, grace_period_seconds=0)
            return names.SPEC in (made.metadata.annotations or {})

        wait_for(mutated, timeout=30, interval=0.5, what="the webhook to be called")
        yield {
            "core": core,
            "api": api,
            "enabled": enabled,
            "plain": plain,
            "server": server,
            "work": work,
            "suffix": suffix,
            "adm": adm,
        }
    finally:
        if server is not None:
            server.stop()
        for undo in reversed(cleanup):
            with contextlib.suppress(ApiException):
                undo()
        api.close()


def _create_pod(env: dict[str, Any], namespace: str, body: dict[str, Any], **kw: Any) -> Any:
    made = env["core"].create_namespaced_pod(namespace, body, **kw)
    if not kw.get("dry_run"):
        env.setdefault("pods", []).append((namespace, made.metadata.name))
    return made


@pytest.fixture(autouse=True)
def _delete_pods(env: dict[str, Any]) -> Iterator[None]:
    yield
    for namespace, name in env.pop("pods", []):
        with contextlib.suppress(ApiException):
            env["core"].delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_pod_in_opted_in_namespace_is_mutated(env: dict[str, Any]) -> None:
    body = pod("rt-ok", {RT: "runtime=2ms,period=10ms,cpus=2"}, containers=("app", "sidecar"))
    _create_pod(env, env["enabled"], body)
    stored = env["core"].read_namespaced_pod("rt-ok", env["enabled"])
    annotations = stored.metadata.annotations
    assert json.loads(annotations[names.SPEC]) == {
        "app": {"runtime": 2_000_000, "deadline": 10_000_000, "period": 10_000_000, "cpus": 2}
    }
    # No NRI device-injector annotation: the CDI device comes from the agent's device plugin (the dl request).
    assert not [k for k in annotations if k.startswith("cdi-devices.noderesource.dev/")]
    app, sidecar = stored.spec.containers
    assert {e.name: e.value for e in app.env} == {
        "RT_RUNTIME_NS": "2000000",
        "RT_DEADLINE_NS": "10000000",
        "RT_PERIOD_NS": "10000000",
        "RT_CPUS": "2",
    }
    assert app.resources.requests == {names.DL_RESOURCE: "1"} == app.resources.limits
    assert not sidecar.env and not sidecar.resources.requests


def test_invalid_request_is_denied_with_our_message(env: dict[str, Any]) -> None:
    with pytest.raises(ApiException) as err:
        _create_pod(env, env["enabled"], pod("rt-bad", {RT: "runtime=20ms,period=10ms"}))
    assert err.value.status == 422
    message = json.loads(err.value.body)["message"]
    assert 'admission webhook "mutate.rt.resource.example.com" denied the request' in message
    assert 'container "app", runtime: must not exceed the period' in message


def test_request_for_a_missing_container_is_denied(env: dict[str, Any]) -> None:
    with pytest.raises(ApiException) as err:
        _create_pod(env, env["enabled"], pod("rt-ghost", {f"{names.CONTAINER_PREFIX}db": "runtime=1ms,period=10ms"}))
    assert 'container "db"' in json.loads(err.value.body)["message"]


def test_forged_allocation_is_denied(env: dict[str, Any]) -> None:
    with pytest.raises(ApiException) as err:
        _create_pod(env, env["enabled"], pod("rt-forged", {RT: "runtime=1ms,period=10ms", names.ALLOCATION: "{}"}))
    assert err.value.status == 403 and names.ALLOCATION in json.loads(err.value.body)["message"]


def test_claim_parameters_are_read_from_the_pods_namespace(env: dict[str, Any]) -> None:
    objects = client.CustomObjectsApi(env["api"])
    for name, spec in (("fast", {"count": 2, "runtime": 250, "period": 1000}), ("defaults", {})):
        objects.create_namespaced_custom_object(
            names.CLAIM_PARAMETERS_GROUP,
            names.CLAIM_PARAMETERS_VERSION,
            env["enabled"],
            names.CLAIM_PARAMETERS_PLURAL,
            {
                "apiVersion": f"{names.CLAIM_PARAMETERS_GROUP}/{names.CLAIM_PARAMETERS_VERSION}",
                "kind": names.CLAIM_PARAMETERS_KIND,
                "metadata": {"name": name},
                "spec": spec,
            },
        )
    body = pod(
        "rt-legacy",
        {f"{names.CLAIM_PARAMETERS_PREFIX}app": "fast", f"{names.CLAIM_PARAMETERS_PREFIX}side": "defaults"},
        containers=("app", "side"),
    )
    made = _create_pod(env, env["enabled"], body)
    spec = json.loads(made.metadata.annotations[names.SPEC])
    assert spec["app"] == {"runtime": 250_000, "deadline": 1_000_000, "period": 1_000_000, "cpus": 2}
    # the CRD's defaults (the old driver's 1 / 10 µs / 100 µs) reach the webhook
    assert spec["side"] == {"runtime": 10_000, "deadline": 100_000, "period": 100_000, "cpus": 1}
    with pytest.raises(ApiException) as err:
        _create_pod(env, env["enabled"], pod("rt-nope", {f"{names.CLAIM_PARAMETERS_PREFIX}app": "nope"}))
    assert "RtClaimParameters 'nope' does not exist" in json.loads(err.value.body)["message"]


def test_namespace_without_the_opt_in_label_is_untouched(env: dict[str, Any]) -> None:
    before = env["server"].admissions()
    made = _create_pod(env, env["plain"], pod("rt-elsewhere", {RT: "runtime=20ms,period=10ms"}))
    assert names.SPEC not in made.metadata.annotations
    assert not made.spec.containers[0].env
    assert env["server"].admissions() == before  # never even asked


def test_pods_without_our_annotations_are_not_sent_to_the_webhook(env: dict[str, Any]) -> None:
    before = env["server"].admissions()
    # The NRI device injector's annotation, even naming our device, is no longer RT-DRA's: not sent either.
    plain = {"team": "a", "cdi-devices.noderesource.dev/container.app": f"- {names.CDI_DEVICE_NAME}"}
    made = _create_pod(env, env["enabled"], pod("plain", plain))
    assert made.metadata.annotations == plain
    assert env["server"].admissions() == before  # filtered by the matchConditions CEL expression
    _create_pod(env, env["enabled"], pod("rt-counted", {RT: "runtime=1ms,period=10ms"}))
    assert env["server"].admissions() == before + 1


def test_dry_run_is_mutated_and_leaves_nothing_behind(env: dict[str, Any]) -> None:
    made = _create_pod(env, env["enabled"], pod("rt-dry", {RT: "runtime=1ms,period=10ms"}), dry_run="All")
    assert names.SPEC in made.metadata.annotations
    with pytest.raises(ApiException) as err:
        env["core"].read_namespaced_pod("rt-dry", env["enabled"])
    assert err.value.status == 404


def test_warnings_reach_the_client(env: dict[str, Any]) -> None:
    body = pod("rt-warn", {RT: "runtime=1ms,period=20ms,deadline=2ms,cpus=2"})
    _, _, headers = env["core"].create_namespaced_pod_with_http_info(env["enabled"], body)
    env.setdefault("pods", []).append((env["enabled"], "rt-warn"))
    assert "deadline 2ms is much shorter than period 20ms" in headers.get("Warning", "")


@pytest.mark.parametrize("manifest", sorted(p.name for p in (REPO / "manifests" / "webhook").glob("*.yaml")))
def test_shipped_manifests_are_accepted_by_the_apiserver(env: dict[str, Any], manifest: str) -> None:
    for doc in _load(f"manifests/webhook/{manifest}"):
        namespace = doc["metadata"].get("namespace", "default")
        utils.create_from_dict(env["api"], doc, namespace=namespace, apply=True, dry_run="All")


def test_certs_writes_and_renews_the_tls_secret(env: dict[str, Any], control_plane: Any) -> None:
    out = env["work"] / "secret-pki"
    argv = [
        "certs",
        "--service",
        "rtdra-webhook",
        "--namespace",
        env["enabled"],
        "--out",
        str(out),
        "--secret",
        "rtdra-webhook-tls",
        "--kubeconfig",
        str(control_plane.kubeconfig),
    ]
    assert rtdra_main(argv) == 0
    first = env["core"].read_namespaced_secret("rtdra-webhook-tls", env["enabled"])
    assert first.type == "kubernetes.io/tls" and sorted(first.data) == ["ca.crt", "tls.crt", "tls.key"]
    assert base64.b64decode(first.data["tls.crt"]) == (out / "tls.crt").read_bytes()
    assert rtdra_main(argv) == 0  # renewal replaces the Secret, same CA
    second = env["core"].read_namespaced_secret("rtdra-webhook-tls", env["enabled"])
    assert second.data["tls.crt"] != first.data["tls.crt"] and second.data["ca.crt"] == first.data["ca.crt"]


def test_certificate_without_the_right_san_is_refused_by_the_apiserver(env: dict[str, Any]) -> None:
    # a certificate for the service names only - not for 127.0.0.1, which the apiserver dials
    cert_dir = env["work"] / "wrong-san"
    assert rtdra_main(["certs", "--service", "rtdra-webhook", "--namespace", "rt-dra", "--out", str(cert_dir)]) == 0
    server = WebhookProcess(cert_dir, env["work"] / "wrong-san.log", None, {})
    name = f"rtdra-wrong-san-{env['suffix']}"
    namespace = f"rt-san-{env['suffix']}"
    env["core"].create_namespace({"metadata": {"name": namespace, "labels": {"e2e-wrong-san": env["suffix"]}}})
    try:
        server.wait_ready()
        [config] = _load("manifests/webhook/mutatingwebhookconfiguration.yaml")
        config["metadata"]["name"] = name
        hook = config["webhooks"][0]
        hook["clientConfig"] = {
            "url": server.url + "/mutate",
            "caBundle": base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode(),
        }
        hook["namespaceSelector"] = {"matchLabels": {"e2e-wrong-san": env["suffix"]}}
        env["adm"].create_mutating_webhook_configuration(config)

        def refused() -> str | None:
            try:
                _create_pod(env, namespace, pod(f"rt-{os.urandom(3).hex()}", {RT: "runtime=1ms,period=10ms"}))
            except ApiException as err:
                return str(json.loads(err.body)["message"])
            return None

        message = wait_for(refused, timeout=30, interval=0.5, what="the apiserver to call the wrong-SAN webhook")
        assert "failed calling webhook" in message
        assert "x509" in message and "127.0.0.1" in message, message
    finally:
        with contextlib.suppress(ApiException):
            env["adm"].delete_mutating_webhook_configuration(name)
        server.stop()
