"""The AdmissionReview v1 wire format (``admission.k8s.io/v1``), written down once.

These ``TypedDict``s mirror the upstream Go types' JSON field names exactly
(``k8s.io/api/admission/v1``), so the rest of the webhook can say
``request["uid"]`` and mean what kube-apiserver sends. They describe the wire;
they do not validate it - :mod:`webhook.admission` checks the shape of what
actually arrived before trusting it. Only the fields RT-DRA reads or writes are
spelled out in detail.
"""

from __future__ import annotations

from typing import Any, Final, Literal, NotRequired, TypedDict

API_VERSION: Final = "admission.k8s.io/v1"
KIND: Final = "AdmissionReview"
PATCH_TYPE_JSON_PATCH: Final = "JSONPatch"

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class UserInfo(TypedDict, total=False):
    username: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]]


class AdmissionRequest(TypedDict):
    uid: str
    kind: GroupVersionKind
    resource: GroupVersionResource
    subResource: NotRequired[str]
    requestKind: NotRequired[GroupVersionKind]
    requestResource: NotRequired[GroupVersionResource]
    requestSubResource: NotRequired[str]
    name: NotRequired[str]
    namespace: NotRequired[str]
    operation: Operation
    userInfo: UserInfo
    object: NotRequired[dict[str, Any] | None]
    oldObject: NotRequired[dict[str, Any] | None]
    dryRun: NotRequired[bool]
    options: NotRequired[dict[str, Any] | None]


class Status(TypedDict, total=False):
    """``metav1.Status``: only ``code``, ``message`` and ``reason`` reach the user."""

    code: int
    message: str
    reason: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[Status]
    patch: NotRequired[str]
    patchType: NotRequired[Literal["JSONPatch"]]
    auditAnnotations: NotRequired[dict[str, str]]
    warnings: NotRequired[list[str]]


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: str
    request: NotRequired[AdmissionRequest]
    response: NotRequired[AdmissionResponse]


class PatchOperation(TypedDict):
    """One RFC 6902 JSON Patch operation (only the ops the webhook emits)."""

    op: Literal["add", "replace", "remove"]
    path: str
    value: NotRequired[Any]
