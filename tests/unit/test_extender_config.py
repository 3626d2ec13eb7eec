"""The extender's settings come from the environment and flags; gunicorn gets what they say."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import subprocess
import sys

import pytest

from agent.backends import Applied
from extender.cli import parser
from extender.config import ConfigError, ExtenderConfig
from extender.pods import PodState, is_pending_rt_pod, pending_view
from extender.reconcile import stale_reason
from rtdra.ledger import NodeLedger, PodAllocation, Slot, allocation_annotation
from rtdra.serve import gunicorn_options

MS = 1_000_000


def test_settings_come_from_prefixed_environment_variables_and_flags_win() -> None:
    env = {
        "RTDRA_EXTENDER_BIND": "127.0.0.1:9000",
        "RTDRA_EXTENDER_NAMESPACE": "rt-x",
        "RTDRA_EXTENDER_WORKERS": "3",
        "RTDRA_EXTENDER_BIND_GRACE_SECONDS": "90",
        "RTDRA_EXTENDER_DEFAULT_PLACEMENT": "spread",
    }
    config = ExtenderConfig.from_env(env, namespace="rt-flag")
    assert config.bind == "127.0.0.1:9000" and config.workers == 3 and config.bind_grace_seconds == 90.0
    assert config.namespace == "rt-flag" and config.default_placement == "spread"
    assert ExtenderConfig.from_env({}).namespace == "rt-dra"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RTDRA_EXTENDER_WORKERS": "many"}, "RTDRA_EXTENDER_WORKERS='many': is not a whole number"),
        (
            {"RTDRA_EXTENDER_DEFAULT_PLACEMENT": "random"},
            "RTDRA_EXTENDER_DEFAULT_PLACEMENT='random': must be one of pack, spread",
        ),
        ({"RTDRA_EXTENDER_TLS_CERT_FILE": "c.pem"}, "TLS needs both a certificate and a key file"),
        ({"RTDRA_EXTENDER_CLIENT_CA_FILE": "ca.pem"}, "checking client certificates needs HTTPS"),
        ({"RTDRA_EXTENDER_URL_PREFIX": "scheduler"}, "the URL prefix must start with '/'"),
        ({"RTDRA_EXTENDER_BIND": "8888"}, "bind must be HOST:PORT"),
    ],
)
def test_unusable_settings_are_refused_with_the_reason(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ExtenderConfig.from_env(env)


def test_gunicorn_serves_https_and_checks_client_certificates_when_asked() -> None:
    plain = gunicorn_options("rtdra-extender", ExtenderConfig())
    assert plain["worker_class"] == "gthread" and plain["preload_app"] is False
    assert "certfile" not in plain and "cert_reqs" not in plain
    config = ExtenderConfig(tls_cert_file="c.pem", tls_key_file="k.pem", client_ca_file="ca.pem")
    tls = gunicorn_options("rtdra-extender", config)
    assert (tls["certfile"], tls["keyfile"], tls["ca_certs"]) == ("c.pem", "k.pem", "ca.pem")
    # Optional at the handshake (kubelet's probes present no certificate), required per request: serve.py.
    assert tls["cert_reqs"] == ssl.CERT_OPTIONAL


def test_the_command_line_takes_bind_kubeconfig_and_namespace() -> None:
    args = parser().parse_args(["--bind", "127.0.0.1:1", "--kubeconfig", "k.yaml", "--namespace", "ns"])
    assert (args.bind, args.kubeconfig, args.namespace) == ("127.0.0.1:1", "k.yaml", "ns")
    out = subprocess.run([sys.executable, "-m", "extender.cli", "--help"], capture_output=True, text=True, check=True)
    assert "--bind HOST:PORT" in out.stdout and "--kubeconfig FILE" in out.stdout


def test_a_bad_setting_stops_the_command_with_a_message_not_a_traceback() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "extender.cli", "--bind", "nowhere"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "rtdra-extender: bind must be HOST:PORT, got 'nowhere'"


def test_the_allocation_annotation_names_the_node_and_each_containers_cpus_and_times() -> None:
    allocation = PodAllocation(
        "u",
        "ns",
        "p",
        {
            "b": (Slot(3, 1 * MS, 5 * MS, 5 * MS),),
            "a": (Slot(0, 2 * MS, 8 * MS, 10 * MS), Slot(2, 2 * MS, 8 * MS, 10 * MS)),
        },
    )
    assert json.loads(allocation_annotation(allocation, "n1")) == {
        "node": "n1",
        "containers": {
            "a": {"cpus": [0, 2], "runtimeNs": 2 * MS, "deadlineNs": 8 * MS, "periodNs": 10 * MS},
            "b": {"cpus": [3], "runtimeNs": 1 * MS, "deadlineNs": 5 * MS, "periodNs": 5 * MS},
        },
    }


def test_a_slot_has_one_wire_shape_in_the_ledger_and_in_the_agents_records() -> None:
    slot = Slot(2, 1 * MS, 5 * MS, 10 * MS)
    assert slot.to_json() == {"id": 2, "runtimeNs": 1 * MS, "deadlineNs": 5 * MS, "periodNs": 10 * MS}
    assert Slot.from_json(slot.to_json()) == slot
    allocation = PodAllocation("u", "ns", "p", {"c": (slot,)})
    nas = NodeLedger("n1", {2: 1 << 20}, {"u": allocation}).to_nas()
    assert nas["spec"]["allocatedClaims"]["u"]["containers"]["c"]["rtcpu"]["cpuset"] == [slot.to_json()]
    record = Applied("none", "c", "ctr", 1, (slot,)).to_json()
    assert record["slots"] == [slot.to_json()]
    assert Applied.from_json("c", record).slots == (slot,)


# -- which reservations the reconciler releases ------------------------------------------------------------

NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)


def held(reserved_at: str = "2026-11-26T11:59:30Z") -> PodAllocation:
    return PodAllocation("uid-1", "ns", "p", {"c": (Slot(0, MS, 10 * MS, 10 * MS),)}, reserved_at=reserved_at)


@pytest.mark.parametrize(
    ("pod", "reserved_at", "reason"),
    [
        (PodState("uid-1", "n1", "Running"), "2026-11-26T10:00:00Z", None),
        (PodState("uid-1", "", "Pending"), "2026-11-26T11:59:30Z", None),  # within the grace: a bind in flight
        (PodState("uid-1", "", "Pending"), "2026-11-26T11:58:00Z", "never_bound"),
        (PodState("uid-1", "", "Pending"), "", "never_bound"),
        (PodState("uid-1", "n2", "Running"), "2026-11-26T11:59:30Z", "bound_elsewhere"),
        (PodState("uid-1", "n1", "Succeeded"), "2026-11-26T11:59:30Z", "pod_finished"),
        (PodState("uid-1", "n1", "Failed"), "2026-11-26T11:59:30Z", "pod_finished"),
        (PodState("uid-2", "n1", "Running"), "2026-11-26T11:59:30Z", "pod_gone"),  # same name, new UID
        (None, "2026-11-26T11:59:30Z", "pod_gone"),
    ],
)
def test_a_reservation_is_kept_only_for_a_live_pod_bound_here_or_about_to_be(
    pod: PodState | None, reserved_at: str, reason: str | None
) -> None:
    assert stale_reason(held(reserved_at), "n1", pod, NOW, grace_seconds=60) == reason


def test_the_cli_leaves_prometheus_client_unimported_until_multiprocess_metrics_are_set_up() -> None:
    # prometheus-client chooses its value store at import: imported too early, workers' counts are lost.
    code = "import sys, extender.cli; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("pod", "pending"),
    [
        ({"metadata": {"annotations": {"rt.resource.example.com/spec": "{}"}}, "spec": {}}, True),
        ({"metadata": {"annotations": {"rt.resource.example.com/container.a": "runtime=1ms,period=10ms"}}}, True),
        ({"spec": {"containers": [{"resources": {"limits": {"rt.resource.example.com/dl": "1"}}}]}}, True),
        ({"metadata": {"annotations": {"rt.resource.example.com/spec": "{}"}}, "spec": {"nodeName": "n1"}}, False),
        ({"metadata": {"annotations": {"rt.resource.example.com/spec": "{}"}}, "status": {"phase": "Failed"}}, False),
        ({"metadata": {"annotations": {"other": "x"}}, "spec": {"containers": [{"name": "a"}]}}, False),
    ],
)
def test_only_unbound_real_time_pods_are_requeued_after_a_release(pod: dict[str, object], pending: bool) -> None:
    assert is_pending_rt_pod(pod) is pending


def test_bind_keeps_of_a_pending_pod_only_its_identity_version_our_annotations_and_container_names() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "resourceVersion": "42",
            "labels": {"app": "x"},
            "annotations": {"rt.resource.example.com/spec": "{}", "other": "y"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {
            "containers": [{"name": "a", "image": "i", "env": [{"name": "E", "value": "1"}]}],
            "initContainers": [{"name": "setup", "image": "i"}],
        },
        "status": {"phase": "Pending"},
    }
    assert pending_view(pod) == {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "resourceVersion": "42",
            "annotations": {"rt.resource.example.com/spec": "{}"},
        },
        "spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "setup"}]},
    }
