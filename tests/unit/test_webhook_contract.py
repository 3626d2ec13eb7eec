"""Contract tests of ``POST /mutate`` with real AdmissionReview v1 bodies.

``CAPTURED`` is what kube-apiserver v1.37.2 sent for a pod created from a real
manifest (init container, a sidecar with env and requests; managedFields
dropped). Each test varies that pod, sends the review through the Flask app,
applies the returned patch with ``jsonpatch`` and checks the resulting pod.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from typing import Any

import jsonpatch
import pytest

from rtdra import names
from rtdra.request import read_pod_request
from webhook.admission import Lookups, LookupUnavailable
from webhook.app import create_app
from webhook.config import Toleration, WebhookConfig

CAPTURED = json.loads(
    r"""{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"7f07c9f5-1e01-4b4c-9d32-eb0197975488","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"requestKind":{"group":"","version":"v1","kind":"Pod"},"requestResource":{"group":"","version":"v1","resource":"pods"},"namespace":"default","operation":"CREATE","userInfo":{"username":"kubernetes-admin","groups":["system:masters","system:authenticated"],"extra":{"authentication.kubernetes.io/credential-id":["X509SHA256=eafd1906d9f1349e31fdf58eb25e99c53eb16fc8ab9b7e7b809fe56b144fc8ee"]}},"object":{"kind":"Pod","apiVersion":"v1","metadata":{"generateName":"rt-","namespace":"default","annotations":{"rt.resource.example.com/container.app":"runtime=2ms,period=10ms"}},"spec":{"initContainers":[{"name":"init","image":"busybox","resources":{},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"Always"}],"containers":[{"name":"app","image":"registry.k8s.io/pause:3.10","resources":{},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"},{"name":"sidecar","image":"busybox","env":[{"name":"A","value":"1"}],"resources":{"requests":{"cpu":"100m"}},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"Always"}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","securityContext":{},"schedulerName":"default-scheduler","tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300},{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"},"status":{}},"oldObject":null,"dryRun":false,"options":{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}}}"""
)
APP = "rt.resource.example.com/container.app"
#: The NRI device-injector's annotation, which RT-DRA used to write and no longer reads or writes.
INJECTOR_PREFIX = "cdi-devices.noderesource.dev/container."
CDI_APP = INJECTOR_PREFIX + "app"


def captured_pod() -> dict[str, Any]:
    return copy.deepcopy(CAPTURED["request"]["object"])


def review_of(pod: Mapping[str, Any], **request: Any) -> dict[str, Any]:
    review = copy.deepcopy(CAPTURED)
    review["request"]["object"] = copy.deepcopy(dict(pod))
    review["request"].update(request)
    return review


def pod_with(annotations: Mapping[str, str] | None, **spec: Any) -> dict[str, Any]:
    pod = captured_pod()
    if annotations is None:
        del pod["metadata"]["annotations"]
    else:
        pod["metadata"]["annotations"] = dict(annotations)
    pod["spec"].update(spec)
    return pod


class Webhook:
    """The app under test, plus helpers that check the reply envelope on every call."""

    def __init__(self, config: WebhookConfig | None = None, lookups: Lookups | None = None) -> None:
        self.app = create_app(config or WebhookConfig(), lookups or Lookups())
        self.client = self.app.test_client()

    def review(self, review: Mapping[str, Any]) -> dict[str, Any]:
        reply = self.client.post("/mutate", json=review)
        assert reply.status_code == 200, reply.get_data(as_text=True)
        body = reply.get_json()
        assert body["apiVersion"] == "admission.k8s.io/v1"
        assert body["kind"] == "AdmissionReview"
        assert body["response"]["uid"] == review["request"]["uid"]
        response: dict[str, Any] = body["response"]
        if "patch" in response:
            assert response["patchType"] == "JSONPatch"
        return response

    def admit(self, pod: Mapping[str, Any], **request: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The response and the pod after applying its patch (the pod itself if none)."""
        response = self.review(review_of(pod, **request))
        assert response["allowed"], response.get("status")
        return response, apply(pod, response)

    def deny(self, pod: Mapping[str, Any], **request: Any) -> dict[str, Any]:
        response = self.review(review_of(pod, **request))
        assert response["allowed"] is False
        assert "patch" not in response
        status: dict[str, Any] = response["status"]
        return status


def apply(pod: Mapping[str, Any], response: Mapping[str, Any]) -> dict[str, Any]:
    if "patch" not in response:
        return copy.deepcopy(dict(pod))
    ops = json.loads(base64.b64decode(response["patch"]))
    patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(dict(pod)), ops)
    return patched


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


@pytest.fixture
def webhook() -> Webhook:
    return Webhook()


# --------------------------------------------------------------------------- allowed


def test_pod_without_rt_annotation_is_allowed_unpatched(webhook: Webhook) -> None:
    response, _ = webhook.admit(pod_with({"team": "a"}))
    assert "patch" not in response and "warnings" not in response
    response, _ = webhook.admit(pod_with(None))
    assert "patch" not in response


def test_valid_request_gets_spec_env_and_extended_resource(webhook: Webhook) -> None:
    pod = captured_pod()
    _, patched = webhook.admit(pod)
    annotations = patched["metadata"]["annotations"]
    assert json.loads(annotations[names.SPEC]) == {
        "app": {"runtime": 2_000_000, "deadline": 10_000_000, "period": 10_000_000, "cpus": 1}
    }
    assert annotations[APP] == pod["metadata"]["annotations"][APP]
    assert set(annotations) == {APP, names.SPEC}  # no CDI annotation: the device comes from the device plugin
    app, sidecar = patched["spec"]["containers"]
    assert env_of(app) == {
        "RT_RUNTIME_NS": "2000000",
        "RT_DEADLINE_NS": "10000000",
        "RT_PERIOD_NS": "10000000",
        "RT_CPUS": "1",
    }
    assert app["resources"] == {"requests": {names.DL_RESOURCE: "1"}, "limits": {names.DL_RESOURCE: "1"}}
    # what is not real-time is untouched
    assert sidecar == pod["spec"]["containers"][1]
    assert patched["spec"]["initContainers"] == pod["spec"]["initContainers"]
    assert patched["spec"]["schedulerName"] == "default-scheduler"
    # and what the extender and agent will read back is the same request
    request = read_pod_request(patched)
    assert request is not None and request.containers["app"].runtime_ns == 2_000_000


def test_second_admission_of_a_mutated_pod_changes_nothing() -> None:
    config = WebhookConfig(
        scheduler_name="rt-scheduler",
        toleration=Toleration("rt.resource.example.com/rt-node", "NoSchedule"),
        bandwidth_resource="rt.resource.example.com/bandwidth",
    )
    webhook = Webhook(config)
    pod = pod_with(
        {APP: "runtime=1ms,period=4ms,cpus=2", "rt.resource.example.com/container.sidecar": "runtime=100us,period=1ms"}
    )
    first, once = webhook.admit(pod)
    assert "patch" in first
    second, twice = webhook.admit(once)
    assert "patch" not in second, json.loads(base64.b64decode(second.get("patch", "") or "W10="))
    assert twice == once
    assert "warnings" not in second


def test_patch_is_correct_for_a_pod_with_env_resources_and_odd_annotation_keys(webhook: Webhook) -> None:
    odd = {"a/b~c": "1", "~": "tilde", "x.y/z/w": "slashes"}
    pod = pod_with({**odd, "rt.resource.example.com/container.sidecar": "runtime=500us,period=2ms,deadline=1ms"})
    pod["spec"]["containers"][1]["env"].append({"name": "RT_CPUS", "value": "99"})
    pod["spec"]["containers"][1]["env"].append(
        {"name": "RT_PERIOD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    )
    _, patched = webhook.admit(pod)
    for key, value in odd.items():
        assert patched["metadata"]["annotations"][key] == value
    sidecar = patched["spec"]["containers"][1]
    assert env_of(sidecar) == {
        "A": "1",
        "RT_CPUS": "1",
        "RT_PERIOD_NS": "2000000",
        "RT_RUNTIME_NS": "500000",
        "RT_DEADLINE_NS": "1000000",
    }
    assert sidecar["resources"] == {
        "requests": {"cpu": "100m", names.DL_RESOURCE: "1"},
        "limits": {names.DL_RESOURCE: "1"},
    }
    assert patched["spec"]["containers"][0] == pod["spec"]["containers"][0]


def test_patch_is_correct_for_a_pod_with_empty_annotations_env_and_no_resources(webhook: Webhook) -> None:
    pod = pod_with({APP: "runtime=1ms,period=10ms"})
    pod["spec"]["containers"][0]["env"] = []
    del pod["spec"]["containers"][0]["resources"]
    del pod["spec"]["initContainers"]
    _, patched = webhook.admit(pod)
    assert env_of(patched["spec"]["containers"][0])["RT_RUNTIME_NS"] == "1000000"
    assert patched["spec"]["containers"][0]["resources"]["limits"] == {names.DL_RESOURCE: "1"}


def test_every_rt_container_requests_one_slot_of_the_extended_resource(webhook: Webhook) -> None:
    # kubelet asks the device plugin for the CDI device per container that requests the resource.
    containers = [{"name": f"c{i}", "image": "x"} for i in range(4)]
    pod = pod_with(
        {f"{names.CONTAINER_PREFIX}c{i}": "runtime=1ms,period=10ms" for i in (1, 2, 3)}, containers=containers
    )
    _, patched = webhook.admit(pod)
    for part in ("requests", "limits"):
        requested = [c.get("resources", {}).get(part, {}).get(names.DL_RESOURCE) for c in patched["spec"]["containers"]]
        assert requested == [None, "1", "1", "1"]
    assert [bool(c.get("env")) for c in patched["spec"]["containers"]] == [False, True, True, True]
    again, twice = webhook.admit(patched)
    assert "patch" not in again and twice == patched


def test_a_user_set_slot_count_is_corrected_to_one_in_requests_and_limits(webhook: Webhook) -> None:
    pod = pod_with({APP: "runtime=1ms,period=10ms"})
    pod["spec"]["containers"][0]["resources"] = {"limits": {names.DL_RESOURCE: "3", "cpu": "1"}}
    _, patched = webhook.admit(pod)
    assert patched["spec"]["containers"][0]["resources"] == {
        "requests": {names.DL_RESOURCE: "1"},
        "limits": {names.DL_RESOURCE: "1", "cpu": "1"},
    }


def test_device_injector_annotations_are_left_as_the_user_wrote_them(webhook: Webhook) -> None:
    pod = pod_with({APP: "runtime=1ms,period=10ms", CDI_APP: "- vendor.com/gpu=0\n"})
    _, patched = webhook.admit(pod)
    assert patched["metadata"]["annotations"][CDI_APP] == "- vendor.com/gpu=0\n"


def test_scheduler_name_toleration_and_bandwidth_resource_follow_the_configuration() -> None:
    toleration = Toleration("rt.resource.example.com/rt-node", "NoSchedule", "true")
    webhook = Webhook(
        WebhookConfig(
            extended_resource=False,
            scheduler_name="rt-scheduler",
            toleration=toleration,
            bandwidth_resource="rt.resource.example.com/bandwidth",
        )
    )
    _, patched = webhook.admit(pod_with({APP: "runtime=2500us,period=10ms,cpus=2"}))
    assert patched["spec"]["schedulerName"] == "rt-scheduler"
    assert patched["spec"]["tolerations"][-1] == {
        "key": "rt.resource.example.com/rt-node",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    }
    resources = patched["spec"]["containers"][0]["resources"]
    # 2 CPUs x 25 %, in thousandths of a CPU, requests = limits; no dl resource when it is switched off
    assert resources == {
        "requests": {"rt.resource.example.com/bandwidth": "500"},
        "limits": {"rt.resource.example.com/bandwidth": "500"},
    }


def test_toleration_is_not_added_when_an_existing_one_covers_the_taint() -> None:
    webhook = Webhook(WebhookConfig(toleration=Toleration("rt-node", "NoSchedule")))
    pod = pod_with({APP: "runtime=1ms,period=10ms"}, tolerations=[{"operator": "Exists"}])
    _, patched = webhook.admit(pod)
    assert patched["spec"]["tolerations"] == [{"operator": "Exists"}]
    pod = pod_with({APP: "runtime=1ms,period=10ms"})
    del pod["spec"]["tolerations"]
    _, patched = webhook.admit(pod)
    assert patched["spec"]["tolerations"] == [{"key": "rt-node", "operator": "Exists", "effect": "NoSchedule"}]


def test_dry_run_is_answered_exactly_like_a_real_request(webhook: Webhook) -> None:
    pod = captured_pod()
    real = webhook.review(review_of(pod))
    dry = webhook.review(review_of(pod, dryRun=True))
    assert dry == real


def test_operations_other_than_create_are_allowed_untouched(webhook: Webhook) -> None:
    pod = pod_with({APP: "runtime=20ms,period=10ms"})
    response, _ = webhook.admit(pod, operation="UPDATE", oldObject=pod)
    assert "patch" not in response


def test_a_deadline_much_shorter_than_the_period_is_a_warning() -> None:
    response, _ = Webhook().admit(pod_with({APP: "runtime=1ms,period=20ms,deadline=2ms,cpus=4"}))
    [warning] = response["warnings"]
    assert 'container "app"' in warning and "deadline 2ms" in warning and "4 CPUs" in warning


# --------------------------------------------------------------------------- denied


@pytest.mark.parametrize(
    ("value", "field", "rule"),
    [
        ("runtime=20ms,period=10ms", "runtime", "must not exceed the period"),
        ("runtime=500ns,period=10ms", "runtime", "at least 1024ns"),
        ("runtime=10us,period=50us", "period", "must be between 100us"),
        ("runtime=1ms,period=5s", "period", "must be between 100us"),
        ("runtime=1ms,period=10ms,deadline=20ms", "deadline", "must not exceed the period"),
        ("runtime=3ms,period=10ms,deadline=2ms", "runtime", "must not exceed the deadline"),
        ("runtime=1ms,period=10ms,cpus=0", "cpus", "at least 1"),
        ("runtime=1ms", "period", "is required"),
        ("runtime=1.5ms,period=10ms", "runtime", "whole number"),
        ("runtime=1ms,period=10parsecs", "period", "unknown unit"),
    ],
)
def test_invalid_request_is_denied_with_422_naming_container_field_and_rule(
    webhook: Webhook, value: str, field: str, rule: str
) -> None:
    status = webhook.deny(pod_with({APP: value}))
    assert status["code"] == 422 and status["reason"] == "Invalid"
    assert f'container "app", {field}: ' in status["message"]
    assert rule in status["message"]


def test_unknown_key_and_bad_placement_are_denied(webhook: Webhook) -> None:
    status = webhook.deny(pod_with({APP: "runtime=1ms,period=10ms,priority=3"}))
    assert "'priority' is not a known key" in status["message"]
    status = webhook.deny(pod_with({APP: "runtime=1ms,period=10ms", names.PLACEMENT: "random"}))
    assert names.PLACEMENT in status["message"] and "pack, spread" in status["message"]


def test_request_for_a_container_the_pod_does_not_have_is_denied(webhook: Webhook) -> None:
    status = webhook.deny(pod_with({f"{names.CONTAINER_PREFIX}db": "runtime=1ms,period=10ms"}))
    assert status["code"] == 422
    assert 'container "db"' in status["message"] and "app, sidecar" in status["message"]


def test_request_for_an_init_container_is_denied(webhook: Webhook) -> None:
    status = webhook.deny(pod_with({f"{names.CONTAINER_PREFIX}init": "runtime=1ms,period=10ms"}))
    assert 'container "init"' in status["message"] and "init container" in status["message"]


# --------------------------------------------------------------------------- forged ledger inputs


def test_user_supplied_allocation_is_denied(webhook: Webhook) -> None:
    status = webhook.deny(pod_with({APP: "runtime=1ms,period=10ms", names.ALLOCATION: '{"cpus":[0]}'}))
    assert status["code"] == 403 and names.ALLOCATION in status["message"]
    status = webhook.deny(pod_with({names.ALLOCATION: "{}"}))
    assert status["code"] == 403


def test_user_supplied_spec_is_replaced_by_the_canonical_one(webhook: Webhook) -> None:
    forged = json.dumps({"app": {"runtime": 9_000_000, "deadline": 10_000_000, "period": 10_000_000, "cpus": 1}})
    response, patched = webhook.admit(pod_with({APP: "runtime=1ms,period=10ms", names.SPEC: forged}))
    assert json.loads(patched["metadata"]["annotations"][names.SPEC])["app"]["runtime"] == 1_000_000
    assert any(names.SPEC in w and "replaced" in w for w in response["warnings"])


def test_user_supplied_spec_without_a_request_is_removed_and_nothing_else_changes(webhook: Webhook) -> None:
    pod = pod_with({names.SPEC: '{"sidecar":{"runtime":1000000,"deadline":10000000,"period":10000000,"cpus":1}}'})
    response, patched = webhook.admit(pod)
    del pod["metadata"]["annotations"][names.SPEC]
    assert patched == pod
    assert any("removed" in w for w in response["warnings"])


def test_device_injector_annotations_are_no_longer_judged(webhook: Webhook) -> None:
    # Naming our device there grants nothing: the agent's hook refuses a container the extender
    # allocated nothing to (NoAllocation), and RT-DRA no longer relies on an NRI device injector.
    sidecar_cdi = INJECTOR_PREFIX + "sidecar"
    ours = f"- {names.CDI_DEVICE_NAME}\n"
    response, _ = webhook.admit(pod_with({sidecar_cdi: ours}))
    assert response["allowed"] and "patch" not in response
    pod = pod_with({APP: "runtime=1ms,period=10ms", sidecar_cdi: ours, CDI_APP: "{not: [a list"})
    response, patched = webhook.admit(pod)
    assert response["allowed"]
    assert patched["metadata"]["annotations"][sidecar_cdi] == ours
    assert patched["metadata"]["annotations"][CDI_APP] == "{not: [a list"


# --------------------------------------------------------------------------- RtClaimParameters and namespaces


def test_claim_parameters_are_read_from_the_pods_namespace_with_a_migration_warning() -> None:
    asked: list[tuple[str, str]] = []

    def lookup(namespace: str, name: str) -> Mapping[str, Any] | None:
        asked.append((namespace, name))
        return {"count": 2, "runtime": 250, "period": 1000} if name == "fast" else None

    webhook = Webhook(lookups=Lookups(claim_parameters=lookup))
    response, patched = webhook.admit(pod_with({f"{names.CLAIM_PARAMETERS_PREFIX}app": "fast"}))
    assert asked == [("default", "fast")]
    assert json.loads(patched["metadata"]["annotations"][names.SPEC])["app"] == {
        "runtime": 250_000,
        "deadline": 1_000_000,
        "period": 1_000_000,
        "cpus": 2,
    }
    assert any("runtime=250us,period=1ms,cpus=2" in w for w in response["warnings"])
    status = webhook.deny(pod_with({f"{names.CLAIM_PARAMETERS_PREFIX}app": "missing"}))
    assert status["code"] == 422 and "'missing' does not exist in namespace 'default'" in status["message"]


def test_unreachable_api_for_claim_parameters_is_a_clear_503() -> None:
    def lookup(namespace: str, name: str) -> Mapping[str, Any] | None:
        raise LookupUnavailable("the API server did not answer (ReadTimeoutError)")

    status = Webhook(lookups=Lookups(claim_parameters=lookup)).deny(
        pod_with({f"{names.CLAIM_PARAMETERS_PREFIX}app": "fast"})
    )
    assert status["code"] == 503 and "RtClaimParameters" in status["message"] and "did not answer" in status["message"]


def test_namespace_without_opt_in_label_is_denied_when_verification_is_on() -> None:
    labels = {"default": {}, "rt": {names.NAMESPACE_OPT_IN_LABEL: "true"}}
    webhook = Webhook(WebhookConfig(verify_namespace=True), Lookups(namespace_labels=labels.get))
    status = webhook.deny(captured_pod())
    assert status["code"] == 403 and names.NAMESPACE_OPT_IN_LABEL in status["message"]
    pod = captured_pod()
    pod["metadata"]["namespace"] = "rt"
    response, _ = webhook.admit(pod, namespace="rt")
    assert "patch" in response


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}',
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}',
        b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}',
        b"[" * 100_000,
    ],
)
def test_malformed_body_is_a_400_with_a_json_message(webhook: Webhook, body: bytes) -> None:
    reply = webhook.client.post("/mutate", data=body, content_type="application/json")
    assert reply.status_code == 400
    assert reply.get_json()["error"]


def test_pod_of_the_wrong_shape_is_denied_with_400(webhook: Webhook) -> None:
    pod = pod_with({APP: "runtime=1ms,period=10ms"})
    pod["spec"]["containers"][0]["env"] = {"RT": "x"}
    status = webhook.deny(pod)
    assert status["code"] == 400 and "spec.containers[0].env" in status["message"]
    status = webhook.deny({"metadata": {"annotations": {APP: 5}}, "spec": {}})
    assert status["code"] == 400 and "metadata.annotations" in status["message"]


def test_wrong_method_and_unknown_path_are_json_errors(webhook: Webhook) -> None:
    assert webhook.client.get("/mutate").status_code == 405
    reply = webhook.client.post("/nope", json={})
    assert reply.status_code == 404 and "error" in reply.get_json()
