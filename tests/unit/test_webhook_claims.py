"""DRA mode in the webhook: ResourceClaims and templates of our class completed from RtClaimParameters, or denied.

Payloads are AdmissionReviews as kube-apiserver v1.37 sends them for resource.k8s.io/v1
(after its defaulting: ``allocationMode: ExactCount`` and ``count: 1`` are already there).
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtdra import dra
from rtdra.bandwidth import BW_UNIT
from webhook.admission import Lookups, admit
from webhook.claims import ClaimDenied, build_claim_patch
from webhook.config import WebhookConfig


def params(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": dra.PARAMETERS_API_VERSION, "kind": dra.PARAMETERS_KIND, "spec": spec}


def claim_spec(parameters: Any = None, *, scope: list[str] | None = None, **exactly: Any) -> dict[str, Any]:
    """A claim spec as the apiserver hands it to admission: ExactCount and count 1 defaulted."""
    request = {"deviceClassName": dra.DEVICE_CLASS, "allocationMode": "ExactCount", "count": 1, **exactly}
    devices: dict[str, Any] = {"requests": [{"name": "rt", "exactly": request}]}
    if parameters is not None:
        config: dict[str, Any] = {"opaque": {"driver": dra.DRIVER, "parameters": parameters}}
        if scope is not None:
            config["requests"] = scope
        devices["config"] = [config]
    return {"devices": devices}


def review(resource: str, spec: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    kind = "ResourceClaim" if resource == "resourceclaims" else "ResourceClaimTemplate"
    obj = {"apiVersion": "resource.k8s.io/v1", "kind": kind, "metadata": {"name": "c", "namespace": "rt"}}
    obj["spec"] = spec if kind == "ResourceClaim" else {"spec": spec}
    return {
        "uid": "u-1",
        "kind": {"group": "resource.k8s.io", "version": "v1", "kind": kind},
        "resource": {"group": "resource.k8s.io", "version": "v1", "resource": resource},
        "namespace": "rt",
        "operation": operation,
        "userInfo": {"username": "alice"},
        "object": obj,
    }


def applied(request: dict[str, Any]) -> dict[str, Any]:
    """The object after the webhook's patch (as kube-apiserver applies it)."""
    response = admit(request, WebhookConfig(), Lookups())  # type: ignore[arg-type]
    assert response["allowed"], response
    if "patch" not in response:
        return dict(request["object"])
    patch = json.loads(base64.b64decode(response["patch"]))
    return dict(jsonpatch.apply_patch(request["object"], patch))


def exactly_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]["spec"] if obj["kind"] == "ResourceClaimTemplate" else obj["spec"]
    return dict(spec["devices"]["requests"][0]["exactly"])


@pytest.mark.parametrize("resource", ["resourceclaims", "resourceclaimtemplates"])
def test_count_and_bandwidth_are_written_from_the_parameters(resource: str) -> None:
    done = exactly_of(applied(review(resource, claim_spec(params(count=2, runtime=1000, period=10000)))))
    assert done["allocationMode"] == "ExactCount"
    assert done["count"] == 2
    assert done["capacity"] == {"requests": {dra.CAPACITY: str((1000 << 20) // 10000)}}


def test_the_old_drivers_defaults_apply() -> None:
    done = exactly_of(applied(review("resourceclaims", claim_spec(params()))))
    assert (done["count"], done["capacity"]["requests"][dra.CAPACITY]) == (1, str((10 << 20) // 100))


def test_a_deadline_shorter_than_the_period_books_the_density_and_warns() -> None:
    spec = claim_spec(params(runtime=1000, period=10000, deadline=2000))
    mutation = build_claim_patch(spec, "/spec")
    assert mutation.patch[-1]["value"] == {"requests": {dra.CAPACITY: str(BW_UNIT // 2)}}
    assert "density" in mutation.warnings[0]


@given(
    count=st.integers(1, dra.MAX_DEVICES_PER_CLAIM),
    period=st.integers(100, 1 << 22),
    data=st.data(),
)
def test_the_patch_is_idempotent_and_books_capacity_request(count: int, period: int, data: st.DataObject) -> None:
    runtime = data.draw(st.integers(2, period))
    request = review("resourceclaims", claim_spec(params(count=count, runtime=runtime, period=period)))
    once = applied(request)
    assert applied({**request, "object": once}) == once  # a completed claim gets an empty patch
    expected = dra.capacity_request(
        dra.parameters_reservation("rt", params(count=count, runtime=runtime, period=period))
    )
    assert dra.parse_quantity(exactly_of(once)["capacity"]["requests"][dra.CAPACITY]) == expected


def denied(spec: dict[str, Any], resource: str = "resourceclaims") -> str:
    response = admit(review(resource, spec), WebhookConfig(), Lookups())  # type: ignore[arg-type]
    assert not response["allowed"]
    assert response["status"]["code"] == 422
    return response["status"]["message"]


def test_a_request_without_parameters_is_denied_with_what_to_add() -> None:
    message = denied(claim_spec(None))
    assert 'request "rt" of device class rt.resource.example.com has no RtClaimParameters' in message
    example = json.loads(message.split("spec.devices.config: ")[1].split(" (runtime")[0])
    assert example["opaque"]["parameters"]["kind"] == "RtClaimParameters" and example["requests"] == ["rt"]


def test_parameters_scoped_to_another_request_do_not_count() -> None:
    spec = claim_spec(params(), scope=["gpu"])
    spec["devices"]["requests"].append({"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}})
    message = denied(spec)
    assert "not of device class" in message and "has no RtClaimParameters" in message


def test_rules_and_words_are_the_annotations() -> None:
    assert 'request "rt", runtime: must not exceed the period, got runtime 2ms > period 1ms' in denied(
        claim_spec(params(runtime=2000, period=1000))
    )
    assert 'request "rt", deadline: must not exceed the period' in denied(
        claim_spec(params(runtime=100, period=1000, deadline=2000))
    )
    assert 'request "rt", speed: is not a known field' in denied(claim_spec(params(speed=1)))
    assert "must be apiVersion rt.resource.example.com/v1alpha1, kind RtClaimParameters" in denied(
        claim_spec({"apiVersion": "v1", "kind": "ConfigMap"})
    )


def test_contradictions_are_denied_and_agreement_is_kept() -> None:
    assert "count 3 contradicts RtClaimParameters count 2" in denied(claim_spec(params(count=2), count=3))
    assert "allocationMode All contradicts" in denied(claim_spec(params(count=2), allocationMode="All"))
    bw = (1000 << 20) // 10000
    wrong = {"requests": {dra.CAPACITY: str(bw + 1)}}
    assert "contradicts RtClaimParameters" in denied(claim_spec(params(runtime=1000, period=10000), capacity=wrong))
    right = {"requests": {dra.CAPACITY: str(bw)}}
    spec = claim_spec(params(count=2, runtime=1000, period=10000), count=2, capacity=right)
    assert build_claim_patch(spec, "/spec").patch == ()


def test_more_than_32_cpus_is_denied_with_the_upstream_limit() -> None:
    assert "must be at most 32" in denied(claim_spec(params(count=33)))


def test_two_parameters_for_one_request_are_denied() -> None:
    spec = claim_spec(params())
    spec["devices"]["config"].append(copy.deepcopy(spec["devices"]["config"][0]))
    assert "more than one RtClaimParameters" in denied(spec)


def test_first_available_of_our_class_is_denied() -> None:
    spec = {
        "devices": {
            "requests": [{"name": "rt", "firstAvailable": [{"name": "a", "deviceClassName": dra.DEVICE_CLASS}]}]
        }
    }
    assert "firstAvailable cannot name device class" in denied(spec)


def test_other_classes_updates_and_pods_are_untouched() -> None:
    other = {"devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "gpu.example.com", "count": 1}}]}}
    response = admit(review("resourceclaims", other), WebhookConfig(), Lookups())  # type: ignore[arg-type]
    assert response == {"uid": "u-1", "allowed": True}
    update = review("resourceclaims", claim_spec(None), operation="UPDATE")
    assert admit(update, WebhookConfig(), Lookups()) == {"uid": "u-1", "allowed": True}  # type: ignore[arg-type]


def test_the_namespace_check_applies_to_claims_too() -> None:
    request = review("resourceclaims", claim_spec(params()))
    config = WebhookConfig(verify_namespace=True)
    response = admit(request, config, Lookups(namespace_labels=lambda ns: {}))  # type: ignore[arg-type]
    assert response["status"]["code"] == 403


def test_quantities_parse_as_kube_apiserver_writes_them() -> None:
    assert dra.parse_quantity("1Mi") == BW_UNIT
    assert dra.parse_quantity("104857") == 104857
    assert dra.parse_quantity("1e3") == 1000
    assert dra.parse_quantity("1500m") == 2
    with pytest.raises(ValueError):
        dra.parse_quantity("1Xi")
    with pytest.raises(ClaimDenied):
        build_claim_patch({"devices": {"requests": "x"}}, "/spec")


def pod_review(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "uid": "u-2",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "rt",
        "operation": "CREATE",
        "userInfo": {"username": "alice"},
        "object": pod,
    }


def pod_with_claims(**annotations: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {
            "containers": [{"name": "app", "image": "busybox"}, {"name": "side", "image": "busybox"}],
            "resourceClaims": [{"name": "rt", "resourceClaimTemplateName": "t"}],
        },
    }


def patched_pod(pod: dict[str, Any], config: WebhookConfig) -> dict[str, Any]:
    response = admit(pod_review(pod), config, Lookups())  # type: ignore[arg-type]
    assert response["allowed"], response
    if "patch" not in response:
        return pod
    return dict(jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"]))))


def test_pods_with_claims_get_the_scoring_marker_only_when_configured() -> None:
    marker = {dra.SCORING_RESOURCE: "1"}
    done = patched_pod(pod_with_claims(), WebhookConfig(dra_scoring=True))
    assert done["spec"]["containers"][0]["resources"] == {"requests": marker, "limits": marker}
    assert "resources" not in done["spec"]["containers"][1]
    assert patched_pod(done, WebhookConfig(dra_scoring=True)) == done  # idempotent
    assert patched_pod(pod_with_claims(), WebhookConfig()) == pod_with_claims()
    plain = pod_with_claims()
    del plain["spec"]["resourceClaims"]
    assert patched_pod(plain, WebhookConfig(dra_scoring=True)) == plain


def test_the_marker_and_an_rt_request_on_one_container_keep_each_other() -> None:
    pod = pod_with_claims(**{"rt.resource.example.com/container.app": "runtime=1ms,period=10ms"})
    done = patched_pod(pod, WebhookConfig(dra_scoring=True))
    requests = done["spec"]["containers"][0]["resources"]["requests"]
    assert requests == {dra.SCORING_RESOURCE: "1", "rt.resource.example.com/dl": "1"}
