"""The webhook's service surface: health, readiness, metrics, configuration."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rtdra.certs import CertificateAuthority
from webhook.admission import Lookups
from webhook.app import create_app
from webhook.config import Toleration, WebhookConfig

REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "default",
        "operation": "CREATE",
        "userInfo": {"username": "alice"},
        "object": {
            "metadata": {"annotations": {"rt.resource.example.com/container.app": "runtime=1ms,period=10ms"}},
            "spec": {"containers": [{"name": "app", "image": "x"}]},
        },
    },
}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


def test_healthz_and_readyz_answer_ok() -> None:
    client = create_app(WebhookConfig(), Lookups()).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_readyz_fails_when_the_serving_certificate_expired(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    expired = tmp_path / "expired.crt"
    expired.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    reply = create_app(WebhookConfig(tls_cert=str(expired)), Lookups()).test_client().get("/readyz")
    assert reply.status_code == 503 and "expired" in reply.get_json()["reason"]

    fresh = tmp_path / "tls.crt"
    fresh.write_bytes(CertificateAuthority.create().issue_serving(["svc.ns.svc"])[0])
    assert create_app(WebhookConfig(tls_cert=str(fresh)), Lookups()).test_client().get("/readyz").status_code == 200


def test_metrics_count_admissions_by_outcome_and_time_them() -> None:
    client = create_app(WebhookConfig(), Lookups()).test_client()
    client.post("/mutate", json=REVIEW)
    client.post("/mutate", json=REVIEW)
    denied = {
        **REVIEW,
        "request": {
            **REVIEW["request"],
            "object": {
                "spec": {"containers": []},
                "metadata": {"annotations": {"rt.resource.example.com/container.app": "runtime=1ms"}},
            },
        },
    }
    client.post("/mutate", json=denied)
    client.post("/mutate", data=b"{")
    text = client.get("/metrics").get_data(as_text=True)
    assert _metric(text, 'rtdra_webhook_admissions_total{outcome="mutated"}') == 2
    assert _metric(text, 'rtdra_webhook_admissions_total{outcome="denied"}') == 1
    assert _metric(text, 'rtdra_webhook_admissions_total{outcome="bad_request"}') == 1
    assert _metric(text, 'rtdra_webhook_admissions_total{outcome="allowed"}') == 0
    assert _metric(text, 'rtdra_webhook_admission_duration_seconds_count{outcome="mutated"}') == 2


def test_the_product_serves_no_benchmark_floor() -> None:
    assert create_app(WebhookConfig(), Lookups()).test_client().post("/floor", json=REVIEW).status_code == 404


def test_configuration_is_read_from_prefixed_environment() -> None:
    config = WebhookConfig.from_env(
        {
            "RTDRA_WEBHOOK_EXTENDED_RESOURCE": "false",
            "RTDRA_WEBHOOK_SCHEDULER_NAME": "rt-scheduler",
            "RTDRA_WEBHOOK_TOLERATION": "rt.resource.example.com/rt-node=true:NoSchedule",
            "RTDRA_WEBHOOK_BANDWIDTH_RESOURCE": "rt.resource.example.com/bandwidth",
            "RTDRA_WEBHOOK_VERIFY_NAMESPACE": "yes",
            "RTDRA_WEBHOOK_PERIOD_MIN_US": "50",
            "UNRELATED": "x",
        }
    )
    assert config.extended_resource is False
    assert config.scheduler_name == "rt-scheduler"
    assert config.toleration == Toleration("rt.resource.example.com/rt-node", "NoSchedule", "true")
    assert config.bandwidth_resource == "rt.resource.example.com/bandwidth"
    assert config.verify_namespace is True
    assert config.limits.period_min_ns == 50_000
    assert WebhookConfig.from_env({}) == WebhookConfig()


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("TOLERATION", "no-effect", "key[=value]:Effect"),
        ("TOLERATION", "k:Sometimes", "key[=value]:Effect"),
        ("VERIFY_NAMESPACE", "maybe", "boolean"),
        ("API_TIMEOUT", "-1", "positive"),
        ("BANDWIDTH_RESOURCE", "bandwidth", "domain/name"),
    ],
)
def test_bad_configuration_names_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(ValueError, match=f"RTDRA_WEBHOOK_{name}") as err:
        WebhookConfig.from_env({f"RTDRA_WEBHOOK_{name}": value})
    assert words in str(err.value)
