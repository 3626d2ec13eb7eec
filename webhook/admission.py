"""Deciding one AdmissionReview: allow as is, allow with a patch, or deny - and why.

:func:`admit` is the whole admission policy as a function of the request, the
configuration and two injected lookups (RtClaimParameters and namespace
labels), so it can be tested without HTTP or an API server. The Flask view in
:mod:`webhook.app` only decodes, calls this and encodes.

Rules, in order (docs/webhook.md explains them for users):

1. Only pod CREATE is judged - and, in DRA mode, CREATE of ResourceClaims and
   ResourceClaimTemplates (``resource.k8s.io``), which :mod:`webhook.claims` completes or
   denies (422); anything else the configuration routes here is allowed untouched.
   With ``dra_scoring``, a pod with ResourceClaims first gets DRA mode's scoring marker
   (:func:`webhook.mutate.scoring_marker`), then the rules below.
2. A pod that does not have the shape of a Pod is denied (400): we never guess.
3. ``rt.resource.example.com/allocation`` on a new pod is denied (403): only the
   extender writes it, at bind time.
4. A pod that asks for nothing real-time but carries ``rt.resource.example.com/spec``
   has it removed (with a warning) and is otherwise untouched. Users must not be
   able to forge what the extender and the agent read.
5. With ``verify_namespace``, the namespace must carry the opt-in label (403).
6. The request must be valid (422, naming container, field and rule).
7. Otherwise: allowed, with the patch of :func:`webhook.mutate.build_patch`.

``dryRun`` changes nothing here: the webhook has no side effects.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, cast

from rtdra import names
from rtdra.request import ClaimParametersLookup, InvalidRequest, PodRequest, has_rt_request, parse_pod
from webhook.claims import CLAIMS, RESOURCE_GROUP, TEMPLATES, ClaimDenied, build_claim_patch, claim_spec_of
from webhook.config import WebhookConfig
from webhook.mutate import (
    Mutation,
    build_patch,
    escape,
    has_resource_claims,
    request_warnings,
    scoring_marker,
)
from webhook.reviews import (
    API_VERSION,
    KIND,
    PATCH_TYPE_JSON_PATCH,
    AdmissionRequest,
    AdmissionResponse,
    PatchOperation,
)

#: ``namespace -> labels``, ``None`` when the namespace does not exist.
NamespaceLabelsLookup = Callable[[str], Mapping[str, str] | None]

# The numbers are the stdlib's; the reasons are Kubernetes' ``metav1.StatusReason`` names, not HTTP's phrases.
CODE_BAD_REQUEST: Final = HTTPStatus.BAD_REQUEST
CODE_FORBIDDEN: Final = HTTPStatus.FORBIDDEN
CODE_INVALID: Final = HTTPStatus.UNPROCESSABLE_ENTITY
CODE_UNAVAILABLE: Final = HTTPStatus.SERVICE_UNAVAILABLE
_REASONS: Final[Mapping[int, str]] = {
    CODE_BAD_REQUEST: "BadRequest",
    CODE_FORBIDDEN: "Forbidden",
    CODE_INVALID: "Invalid",
    CODE_UNAVAILABLE: "ServiceUnavailable",
}


class LookupUnavailable(RuntimeError):
    """The API server could not answer a lookup (timeout, no access, server error)."""


@dataclass(frozen=True, slots=True)
class Lookups:
    """The webhook's only reads from the cluster, injected so that :func:`admit` stays testable."""

    claim_parameters: ClaimParametersLookup | None = None
    namespace_labels: NamespaceLabelsLookup | None = None


class Denied(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message


# ---------------------------------------------------------------------------
# Shape
# ---------------------------------------------------------------------------


def _check_str_map(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Denied(CODE_BAD_REQUEST, f"{where} must be a map of strings to strings")


def _check_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Denied(CODE_BAD_REQUEST, f"{where} must be a list")
    return value


def check_pod_shape(pod: Any) -> None:
    """Deny (400) anything :func:`build_patch` could not walk safely; the apiserver never sends such a pod."""
    if not isinstance(pod, dict):
        raise Denied(CODE_BAD_REQUEST, "request.object must be a Pod")
    metadata = pod.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise Denied(CODE_BAD_REQUEST, "metadata must be an object")
    _check_str_map((metadata or {}).get("annotations"), "metadata.annotations")
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise Denied(CODE_BAD_REQUEST, "spec must be an object")
    for field in ("containers", "initContainers"):
        for index, container in enumerate(_check_list(spec.get(field), f"spec.{field}")):
            where = f"spec.{field}[{index}]"
            if not isinstance(container, dict) or not isinstance(container.get("name"), str):
                raise Denied(CODE_BAD_REQUEST, f"{where} must be an object with a name")
            for entry in _check_list(container.get("env"), f"{where}.env"):
                if not isinstance(entry, dict):
                    raise Denied(CODE_BAD_REQUEST, f"{where}.env entries must be objects")
            resources = container.get("resources")
            if resources is not None:
                if not isinstance(resources, dict):
                    raise Denied(CODE_BAD_REQUEST, f"{where}.resources must be an object")
                for part in ("requests", "limits"):
                    if resources.get(part) is not None and not isinstance(resources[part], dict):
                        raise Denied(CODE_BAD_REQUEST, f"{where}.resources.{part} must be an object")
    _check_list(spec.get("tolerations"), "spec.tolerations")
    if spec.get("schedulerName") is not None and not isinstance(spec["schedulerName"], str):
        raise Denied(CODE_BAD_REQUEST, "spec.schedulerName must be a string")


# ---------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------


def _check_namespace(namespace: str, lookup: NamespaceLabelsLookup | None) -> None:
    if lookup is None:
        raise Denied(CODE_UNAVAILABLE, "cannot verify the namespace's opt-in label: no API access configured")
    try:
        labels = lookup(namespace)
    except LookupUnavailable as err:
        raise Denied(CODE_UNAVAILABLE, f"cannot verify namespace {namespace!r}: {err}") from None
    if labels is None or labels.get(names.NAMESPACE_OPT_IN_LABEL) != "true":
        raise Denied(
            CODE_FORBIDDEN,
            f"namespace {namespace!r} is not enabled for real-time pods; an administrator enables it with "
            f"the label {names.NAMESPACE_OPT_IN_LABEL}=true",
        )


def _legacy_warnings(annotations: Mapping[str, str], request: PodRequest) -> list[str]:
    out = []
    for key in sorted(annotations):
        if key.startswith(names.CLAIM_PARAMETERS_PREFIX):
            name = key[len(names.CLAIM_PARAMETERS_PREFIX) :]
            if name in request.containers:
                out.append(
                    f"{key} is the old driver's form; prefer {names.CONTAINER_PREFIX}{name}: {request.containers[name]}"
                )
    return out


def decide_claim(request: AdmissionRequest, config: WebhookConfig, lookups: Lookups) -> Mutation:
    """A ResourceClaim or ResourceClaimTemplate: completed for our device class, or denied (422)."""
    resource = request["resource"]["resource"]
    try:
        spec, base = claim_spec_of(request.get("object"), resource)
        mutation = build_claim_patch(spec, base, config.limits)
    except ClaimDenied as err:
        raise Denied(CODE_INVALID, f"invalid real-time claim: {err}") from None
    if mutation.patch and config.verify_namespace:
        _check_namespace(str(request.get("namespace") or "default"), lookups.namespace_labels)
    return mutation


def decide(request: AdmissionRequest, config: WebhookConfig, lookups: Lookups) -> Mutation:
    """The patch and warnings for an allowed request; raises :class:`Denied` otherwise."""
    if (
        request.get("operation") == "CREATE"
        and request["resource"].get("group") == RESOURCE_GROUP
        and request["resource"].get("resource") in (CLAIMS, TEMPLATES)
        and not request.get("subResource")
    ):
        return decide_claim(request, config, lookups)
    if (
        request.get("operation") != "CREATE"
        or request["resource"].get("resource") != "pods"
        or request.get("subResource")
    ):
        return Mutation((), ())
    pod = request.get("object")
    check_pod_shape(pod)
    assert isinstance(pod, dict)
    if config.dra_scoring and has_resource_claims(pod):
        # The marker first: the request's operations are then computed on the pod it leaves.
        marker, pod = scoring_marker(pod)
        mutation = decide_pod(request, pod, config, lookups)
        return Mutation((*marker, *mutation.patch), mutation.warnings)
    return decide_pod(request, pod, config, lookups)


def decide_pod(request: AdmissionRequest, pod: dict[str, Any], config: WebhookConfig, lookups: Lookups) -> Mutation:
    """A pod (shape checked): the real-time request's patch, or nothing for a pod without one."""
    metadata = pod.get("metadata") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    if not any(k.startswith(names.PREFIX) for k in annotations):
        return Mutation((), ())
    if names.ALLOCATION in annotations:
        raise Denied(
            CODE_FORBIDDEN,
            f"a new pod must not carry {names.ALLOCATION}: the scheduler extender writes it when it binds the pod "
            "(remove it, e.g. when re-creating a pod from `kubectl get -o yaml`)",
        )
    if not has_rt_request(annotations):
        if names.SPEC in annotations:
            op: PatchOperation = {"op": "remove", "path": "/metadata/annotations/" + escape(names.SPEC)}
            return Mutation(
                (op,), (f"{names.SPEC} was removed: only RT-DRA writes it, and this pod requests no reservation",)
            )
        return Mutation((), ())
    namespace = str(request.get("namespace") or metadata.get("namespace") or "default")
    if config.verify_namespace:
        _check_namespace(namespace, lookups.namespace_labels)
    # On CREATE the namespace comes from the URL; the object may not carry it yet.
    pod_for_parsing = {**pod, "metadata": {**metadata, "namespace": namespace}}
    try:
        parsed = parse_pod(pod_for_parsing, lookups.claim_parameters, limits=config.limits)
    except LookupUnavailable as err:
        raise Denied(CODE_UNAVAILABLE, f"cannot read RtClaimParameters in namespace {namespace!r}: {err}") from None
    except InvalidRequest as err:
        raise Denied(CODE_INVALID, f"invalid real-time request: {err}") from None
    assert parsed is not None
    mutation = build_patch(pod, parsed, config)
    warnings = [*request_warnings(parsed), *_legacy_warnings(annotations, parsed), *mutation.warnings]
    return Mutation(mutation.patch, tuple(warnings))


class BadReview(ValueError):
    """A body that is not an AdmissionReview v1 request (HTTP 400; the apiserver never sends one)."""


def parse_review(body: bytes) -> AdmissionRequest:
    """Decode and check the envelope of an AdmissionReview v1 request."""
    try:
        review = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise BadReview(f"body is not JSON: {err}") from None
    if not isinstance(review, dict):
        raise BadReview("body must be an AdmissionReview object")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise BadReview(f"body must be apiVersion {API_VERSION}, kind {KIND}")
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview has no request")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("request.uid must be a non-empty string")
    if not isinstance(request.get("operation"), str):
        raise BadReview("request.operation must be a string")
    if not isinstance(request.get("resource"), dict):
        raise BadReview("request.resource must be an object")
    for field in ("namespace", "subResource", "name"):
        if request.get(field) is not None and not isinstance(request[field], str):
            raise BadReview(f"request.{field} must be a string")
    return cast(AdmissionRequest, request)


def encode_review(response: AdmissionResponse) -> dict[str, Any]:
    """The reply envelope: kube-apiserver rejects one whose apiVersion, kind or uid differ."""
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def admit(request: AdmissionRequest, config: WebhookConfig, lookups: Lookups) -> AdmissionResponse:
    """The AdmissionResponse for ``request`` (never raises for bad input)."""
    uid = request["uid"]
    try:
        mutation = decide(request, config, lookups)
    except Denied as denied:
        return {
            "uid": uid,
            "allowed": False,
            "status": {"code": denied.code, "message": denied.message, "reason": _REASONS[denied.code]},
        }
    response: AdmissionResponse = {"uid": uid, "allowed": True}
    if mutation.patch:
        response["patchType"] = PATCH_TYPE_JSON_PATCH
        response["patch"] = base64.b64encode(json.dumps(mutation.patch, separators=(",", ":")).encode()).decode()
    if mutation.warnings:
        response["warnings"] = list(mutation.warnings)
    return response
