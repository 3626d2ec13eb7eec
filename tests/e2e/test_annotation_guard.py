"""RT-DRA's pod annotations after creation, held by ``manifests/webhook/annotation-guard.yaml``.

The shipped ValidatingAdmissionPolicy runs in the real kube-apiserver (v1.37,
RBAC on). Three identities, each with only the RBAC granted here:

- a user (client certificate) who may create, update and patch pods, their
  status, and create Bindings in the test namespace - a pod's owner with
  rights to spare;
- the scheduler extender's ServiceAccount ``rt-dra:rtdra-extender`` (a real
  token) with the extender's pod rights;
- an impostor: a ServiceAccount of the same name in the user's namespace.

Pods are created with the annotations the mutating webhook would have left
(the webhook itself is not registered here: it acts on CREATE only, the
policy on what comes after). Denials must be HTTP 422 carrying the policy's
message. The policy and everything made here are removed afterwards, and the
removal is waited for, so other tests in the session see no policy.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from hack.cluster import ControlPlane
from rtdra import names

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
GUARD = REPO / "manifests" / "webhook" / "annotation-guard.yaml"
POLICY = "rtdra-annotation-guard"
PAUSE = "registry.k8s.io/pause:3.10"  # never pulled: there is no kubelet
USER = "guard-user"
MERGE = "application/merge-patch+json"
OUR_DEVICE = f"- {names.CDI_DEVICE_NAME}"
#: The NRI device-injector's annotation: RT-DRA no longer writes or reads it, so the guard leaves it alone.
INJECTOR_PREFIX = "cdi-devices.noderesource.dev/container."
CDI_APP = f"{INJECTOR_PREFIX}app"
CDI_SIDE = f"{INJECTOR_PREFIX}side"
ONE_SLOT = {"requests": {names.DL_RESOURCE: "1"}, "limits": {names.DL_RESOURCE: "1"}}
REQUEST = f"{names.CONTAINER_PREFIX}app"
SPEC = json.dumps({"app": {"runtime": 1_000_000, "deadline": 10_000_000, "period": 10_000_000, "cpus": 1}})
FIXED_AT_CREATION = "RT-DRA request annotations are fixed when the pod is created"
ONLY_THE_EXTENDER = "only the RT-DRA scheduler extender (system:serviceaccount:rt-dra:rtdra-extender)"
NOT_REMOVED = f"{names.ALLOCATION} cannot be removed"


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def rt_pod(name: str, **extra: str) -> dict[str, Any]:
    """A real-time pod as the webhook leaves it: request, canonical spec, one device-plugin slot on ``app``."""
    annotations = {REQUEST: "runtime=1ms,period=10ms", names.PLACEMENT: "pack", names.SPEC: SPEC}
    body = plain_pod(name, {**annotations, **extra})
    body["spec"]["containers"][0]["resources"] = ONE_SLOT
    return body


def plain_pod(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": PAUSE}, {"name": "side", "image": PAUSE}]},
    }


@dataclass
class Guarded:
    """The namespace and the identities' API clients."""

    namespace: str
    admin: client.CoreV1Api
    user: client.CoreV1Api
    extender: client.CoreV1Api
    impostor: client.CoreV1Api

    def create(self, body: dict[str, Any]) -> str:
        name = f"{body['metadata']['name']}-{uuid.uuid4().hex[:6]}"
        body = {**body, "metadata": {**body["metadata"], "name": name}}
        self.admin.create_namespaced_pod(self.namespace, body)
        return name

    def annotations(self, name: str) -> dict[str, str]:
        return self.admin.read_namespaced_pod(name, self.namespace).metadata.annotations or {}


def replace_fresh(api: client.CoreV1Api, namespace: str, name: str, change: Callable[[client.V1Pod], None]) -> None:
    """A full update (PUT) of the pod as read just before, read again on a 409 as any client must:
    kube-scheduler writes a pending pod's status meanwhile (seen in full runs). Other refusals raise."""
    for attempt in range(5):
        pod = api.read_namespaced_pod(name, namespace)
        change(pod)
        try:
            api.replace_namespaced_pod(name, namespace, pod)
            return
        except ApiException as err:
            if err.status != 409 or attempt == 4:
                raise


def annotate(api: client.CoreV1Api, namespace: str, name: str, changes: dict[str, str | None]) -> None:
    """A JSON merge patch of the pod's annotations (``None`` removes one), as ``kubectl annotate`` sends."""
    api.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": changes}}, _content_type=MERGE)


def denied(call: Callable[[], Any]) -> str:
    """Run a write that the policy must refuse; returns the message (HTTP 422, the policy named)."""
    with pytest.raises(ApiException) as err:
        call()
    assert err.value.status == 422, (err.value.status, err.value.body)
    message = str(json.loads(err.value.body)["message"])
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in message, message
    return message


def bind(api: client.CoreV1Api, namespace: str, name: str, annotations: dict[str, str]) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-a"},
    }
    # The reply is a Status, which the generated client cannot read as a V1Binding.
    api.create_namespaced_pod_binding(name, namespace, body, _preload_content=False)


def _apply_guard(adm: client.AdmissionregistrationV1Api) -> None:
    for doc in yaml.safe_load_all(GUARD.read_text()):
        create, delete = (
            (adm.create_validating_admission_policy, adm.delete_validating_admission_policy)
            if doc["kind"] == "ValidatingAdmissionPolicy"
            else (adm.create_validating_admission_policy_binding, adm.delete_validating_admission_policy_binding)
        )
        with contextlib.suppress(ApiException):
            delete(doc["metadata"]["name"])  # a leftover of an interrupted run
        create(doc)


def _remove_guard(adm: client.AdmissionregistrationV1Api) -> None:
    for delete in (adm.delete_validating_admission_policy_binding, adm.delete_validating_admission_policy):
        with contextlib.suppress(ApiException):
            delete(POLICY)


def _is_enforced(admin: client.CoreV1Api, namespace: str, probe: str) -> bool:
    """Whether an admin's edit of the probe pod's request is refused (the policy binds admins too)."""
    try:
        annotate(admin, namespace, probe, {REQUEST: f"runtime={uuid.uuid4().int % 900 + 10}us,period=10ms"})
    except ApiException as err:
        if err.status == 422 and POLICY in str(err.body):
            return True
        raise
    return False


@pytest.fixture(scope="module")
def guarded(control_plane: ControlPlane) -> Iterator[Guarded]:
    admin_api = control_plane.api_client()
    admin, rbac = client.CoreV1Api(admin_api), client.RbacAuthorizationV1Api(admin_api)
    adm = client.AdmissionregistrationV1Api(admin_api)
    namespace = f"guard-{uuid.uuid4().hex[:8]}"
    apis: list[client.ApiClient] = [admin_api]
    admin.create_namespace({"metadata": {"name": namespace}})
    probe = "probe"
    try:
        rules = [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "create", "update", "patch"]},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get", "update", "patch"]},
            {"apiGroups": [""], "resources": ["pods/binding"], "verbs": ["create"]},
        ]
        rbac.create_namespaced_role(namespace, {"metadata": {"name": "pod-writer"}, "rules": rules})
        subjects = [
            {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": USER},
            {"kind": "ServiceAccount", "name": "rtdra-extender", "namespace": names.DEFAULT_NAMESPACE},
            {"kind": "ServiceAccount", "name": "rtdra-extender", "namespace": namespace},
        ]
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "pod-writer"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-writer"},
                "subjects": subjects,
            },
        )
        kubeconfigs = (
            control_plane.make_user_kubeconfig(USER),
            control_plane.service_account_kubeconfig(names.DEFAULT_NAMESPACE, "rtdra-extender"),
            control_plane.service_account_kubeconfig(namespace, "rtdra-extender"),
        )
        apis += [control_plane.api_client(k) for k in kubeconfigs]
        env = Guarded(namespace, admin, *(client.CoreV1Api(a) for a in apis[1:]))
        admin.create_namespaced_pod(namespace, rt_pod(probe))
        _apply_guard(adm)
        wait_for(lambda: _is_enforced(admin, namespace, probe), "the policy to be enforced")
        yield env
    finally:
        _remove_guard(adm)
        with contextlib.suppress(ApiException):
            wait_for(lambda: not _is_enforced(admin, namespace, probe), "the policy to be gone")
        for pod in admin.list_namespaced_pod(namespace).items:
            with contextlib.suppress(ApiException):
                admin.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        with contextlib.suppress(ApiException):
            admin.delete_namespace(namespace)
        for api in apis:
            api.close()


# -- a pod's user ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({REQUEST: "runtime=9ms,period=10ms"}, id="edit-request"),
        pytest.param({names.SPEC: SPEC.replace("1000000", "9000000")}, id="edit-spec"),
        pytest.param({names.PLACEMENT: None}, id="remove-placement"),
        pytest.param({names.SPEC: None}, id="remove-spec"),
        pytest.param({f"{names.CONTAINER_PREFIX}side": "runtime=1ms,period=10ms"}, id="add-request"),
        pytest.param({f"{names.CLAIM_PARAMETERS_PREFIX}side": "params"}, id="add-claim-parameters"),
    ],
)
def test_a_user_cannot_change_a_real_time_request_after_creation(
    guarded: Guarded, changes: dict[str, str | None]
) -> None:
    name = guarded.create(rt_pod("rt"))
    before = guarded.annotations(name)
    message = denied(lambda: annotate(guarded.user, guarded.namespace, name, changes))
    assert FIXED_AT_CREATION in message and next(iter(changes)) in message
    assert guarded.annotations(name) == before


def test_a_request_cannot_be_added_to_a_pod_created_without_one(guarded: Guarded) -> None:
    name = guarded.create(plain_pod("plain"))
    for changes in ({REQUEST: "runtime=1ms,period=10ms"}, {names.SPEC: SPEC}):
        assert FIXED_AT_CREATION in denied(lambda c=changes: annotate(guarded.user, guarded.namespace, name, c))


def test_a_user_cannot_forge_change_or_remove_the_allocation(guarded: Guarded) -> None:
    name = guarded.create(rt_pod("rt"))
    forged = json.dumps({"node": "node-a", "containers": {"app": [{"cpu": 0}]}})
    assert ONLY_THE_EXTENDER in denied(
        lambda: annotate(guarded.user, guarded.namespace, name, {names.ALLOCATION: forged})
    )
    annotate(guarded.extender, guarded.namespace, name, {names.ALLOCATION: json.dumps({"node": "node-a"})})
    assert ONLY_THE_EXTENDER in denied(
        lambda: annotate(guarded.user, guarded.namespace, name, {names.ALLOCATION: forged})
    )
    assert NOT_REMOVED in denied(lambda: annotate(guarded.user, guarded.namespace, name, {names.ALLOCATION: None}))
    assert NOT_REMOVED in denied(lambda: annotate(guarded.extender, guarded.namespace, name, {names.ALLOCATION: None}))
    assert json.loads(guarded.annotations(name)[names.ALLOCATION]) == {"node": "node-a"}


def test_the_status_subresource_cannot_carry_annotation_changes_past_the_policy(guarded: Guarded) -> None:
    name = guarded.create(rt_pod("rt"))
    body = {"metadata": {"annotations": {names.SPEC: "{}", names.ALLOCATION: "{}"}}}
    denied(lambda: guarded.user.patch_namespaced_pod_status(name, guarded.namespace, body, _content_type=MERGE))
    # ... while the subresource does apply metadata changes (so the policy must cover it):
    unrelated = {"metadata": {"annotations": {"example.com/via-status": "yes"}}}
    guarded.user.patch_namespaced_pod_status(name, guarded.namespace, unrelated, _content_type=MERGE)
    annotations = guarded.annotations(name)
    assert annotations["example.com/via-status"] == "yes" and annotations[names.SPEC] == SPEC


def test_a_binding_cannot_carry_rt_dra_annotations_onto_the_pod(guarded: Guarded) -> None:
    name = guarded.create(rt_pod("rt"))
    for carried in ({names.SPEC: "{}"}, {names.ALLOCATION: "{}"}):
        denied(lambda a=carried: bind(guarded.user, guarded.namespace, name, a))
    assert guarded.admin.read_namespaced_pod(name, guarded.namespace).spec.node_name is None
    bind(guarded.user, guarded.namespace, name, {"example.com/bound-by": USER})  # copied onto the pod, allowed
    assert guarded.annotations(name)["example.com/bound-by"] == USER


def test_which_containers_get_our_cdi_device_is_fixed_in_the_pod_spec_not_in_annotations(guarded: Guarded) -> None:
    # The device comes from the agent's device plugin, per container requesting the resource: kube-apiserver
    # keeps containers' resources (other than a resize of cpu/memory) fixed, with or without the guard.
    name = guarded.create(rt_pod("rt"))

    def give_the_sidecar_a_slot(pod: client.V1Pod) -> None:
        pod.spec.containers[1].resources = client.V1ResourceRequirements(**ONE_SLOT)

    with pytest.raises(ApiException) as err:
        replace_fresh(guarded.user, guarded.namespace, name, give_the_sidecar_a_slot)
    assert err.value.status == 422 and "pod updates may not change fields" in err.value.body
    # The device injector's annotation is nothing to RT-DRA any more: editing it is not the guard's business.
    annotate(guarded.user, guarded.namespace, name, {CDI_SIDE: OUR_DEVICE})
    annotate(guarded.user, guarded.namespace, name, {CDI_SIDE: None, CDI_APP: "- vendor.example.com/gpu=0"})
    read = guarded.admin.read_namespaced_pod(name, guarded.namespace)
    assert (
        read.metadata.annotations[CDI_APP] == "- vendor.example.com/gpu=0" and CDI_SIDE not in read.metadata.annotations
    )
    assert read.spec.containers[0].resources.limits == {names.DL_RESOURCE: "1"}
    assert not read.spec.containers[1].resources.limits


# -- the extender, and who is not the extender -------------------------------------------------------------


def test_the_extender_sets_and_moves_the_allocation_and_binds_with_it(guarded: Guarded) -> None:
    name = guarded.create(rt_pod("rt"))
    annotate(guarded.extender, guarded.namespace, name, {names.ALLOCATION: json.dumps({"node": "node-b"})})
    annotate(guarded.extender, guarded.namespace, name, {names.ALLOCATION: json.dumps({"node": "node-a"})})
    assert json.loads(guarded.annotations(name)[names.ALLOCATION]) == {"node": "node-a"}
    other = guarded.create(rt_pod("rt"))
    bind(guarded.extender, guarded.namespace, other, {names.ALLOCATION: json.dumps({"node": "node-a"})})
    assert json.loads(guarded.annotations(other)[names.ALLOCATION]) == {"node": "node-a"}


def test_a_service_account_named_like_the_extender_elsewhere_is_not_the_extender(guarded: Guarded) -> None:
    name = guarded.create(rt_pod("rt"))
    message = denied(lambda: annotate(guarded.impostor, guarded.namespace, name, {names.ALLOCATION: "{}"}))
    assert ONLY_THE_EXTENDER in message


def test_requeue_is_set_by_the_extender_and_left_free_for_everyone(guarded: Guarded) -> None:
    name = guarded.create(rt_pod("rt"))
    annotate(guarded.extender, guarded.namespace, name, {names.REQUEUE: "2025-01-01T00:00:00.000000Z"})
    annotate(guarded.user, guarded.namespace, name, {names.REQUEUE: "retry now"})
    assert guarded.annotations(name)[names.REQUEUE] == "retry now"
    annotate(guarded.user, guarded.namespace, name, {names.REQUEUE: None})
    assert names.REQUEUE not in guarded.annotations(name)


def test_released_is_set_only_by_the_extender_and_removed_by_nobody(guarded: Guarded) -> None:
    name = guarded.create(rt_pod("rt"))
    mark = json.dumps({"node": "node-a", "reservedAt": "2026-12-01T06:00:00Z"})
    assert "only the RT-DRA scheduler extender" in denied(
        lambda: annotate(guarded.user, guarded.namespace, name, {names.RELEASED: mark})
    )
    annotate(guarded.extender, guarded.namespace, name, {names.RELEASED: mark})
    for who in (guarded.user, guarded.extender):
        assert "cannot be removed" in denied(lambda w=who: annotate(w, guarded.namespace, name, {names.RELEASED: None}))
    assert "only the RT-DRA scheduler extender" in denied(
        lambda: annotate(guarded.user, guarded.namespace, name, {names.RELEASED: mark.replace("06:00", "07:00")})
    )
    assert guarded.annotations(name)[names.RELEASED] == mark


# -- what stays as it was ----------------------------------------------------------------------------------


def test_other_annotations_and_labels_of_a_real_time_pod_stay_editable(guarded: Guarded) -> None:
    name = guarded.create(rt_pod("rt", **{names.ALLOCATION: json.dumps({"node": "node-a"})}))
    annotate(guarded.user, guarded.namespace, name, {"example.com/owner": "team-a"})
    annotate(guarded.user, guarded.namespace, name, {"example.com/owner": "team-b"})
    annotate(guarded.user, guarded.namespace, name, {"example.com/owner": None})

    def relabel(pod: client.V1Pod) -> None:  # a full update (PUT) keeping ours as they are
        pod.metadata.labels = {"tier": "rt"}
        pod.metadata.annotations["example.com/note"] = "replaced whole"

    replace_fresh(guarded.user, guarded.namespace, name, relabel)
    annotations = guarded.annotations(name)
    assert annotations["example.com/note"] == "replaced whole" and "example.com/owner" not in annotations
    assert annotations[names.SPEC] == SPEC and annotations[REQUEST] == "runtime=1ms,period=10ms"


def test_pods_without_rt_dra_annotations_are_unaffected(guarded: Guarded) -> None:
    name = guarded.create(plain_pod("plain", {"example.com/a": "1"}))
    annotate(guarded.user, guarded.namespace, name, {"example.com/a": "2", "example.com/b": "x"})
    annotate(guarded.user, guarded.namespace, name, {"example.com/a": None})
    annotate(guarded.user, guarded.namespace, name, {CDI_APP: "- vendor.example.com/gpu=0"})  # not our device
    bind(guarded.user, guarded.namespace, name, {"example.com/bound": "yes"})
    annotations = guarded.annotations(name)
    assert annotations == {"example.com/b": "x", CDI_APP: "- vendor.example.com/gpu=0", "example.com/bound": "yes"}
