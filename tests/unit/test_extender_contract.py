"""The extender answers kube-scheduler's exact payloads, in both wire modes, as kube-scheduler reads them.

The fixtures are what ``HTTPExtender`` (pkg/scheduler/extender.go) marshals
from ``k8s.io/kube-scheduler/extender/v1``: CamelCase envelope keys (the Go
types have no json tags), a ``v1.Pod`` and - when not node-cache-capable - a
``v1.NodeList`` built without TypeMeta in lowercase Kubernetes JSON.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from extender.app import create_app
from extender.cache import LedgerCache
from extender.config import ExtenderConfig
from rtdra import names
from rtdra.ledger import NodeLedger, PodAllocation, Slot

MS = 1_000_000
CAP = 943719  # 95% RT limit less a 50ms/1s fair server


def ledger(node: str, cpus: int = 2, *, used: float = 0.0, ready: bool = True) -> NodeLedger:
    """A node whose every CPU already carries ``used`` of a CPU (implicit-deadline reservations)."""
    base = NodeLedger(node=node, capacities=dict.fromkeys(range(cpus), CAP), ready=ready)
    if used:
        runtime = int(used * 100 * MS)
        slots = tuple(Slot(cpu, runtime, 100 * MS, 100 * MS) for cpu in range(cpus))
        base = base.reserve(PodAllocation("load-" + node, "load", "load", {"load": slots}))
    return base


def k8s_node(name: str) -> dict[str, Any]:
    """A v1.Node as kube-scheduler's cache holds it (what it puts in ``Nodes.items``)."""
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": "512",
            "creationTimestamp": "2026-11-26T10:00:00Z",
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
        },
        "spec": {},
        "status": {
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110", names.DL_RESOURCE: "1k"},
            "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110", names.DL_RESOURCE: "1k"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": "2026-11-26T10:00:00Z",
                    "lastTransitionTime": "2026-11-26T10:00:00Z",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                }
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "6.12.0",
                "osImage": "rt",
                "containerRuntimeVersion": "containerd://2.1.0",
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def k8s_pod(annotations: dict[str, str] | None = None, containers: tuple[str, ...] = ("ctr0",)) -> dict[str, Any]:
    """A pending v1.Pod as kube-scheduler marshals it (json tags, omitempty)."""
    return {
        "metadata": {
            "name": "rt-app",
            "namespace": "default",
            "uid": "6f1c2d1e-0b8a-4a57-9a53-2f1f4c1f0a01",
            "resourceVersion": "1034",
            "creationTimestamp": "2026-11-26T10:01:00Z",
            "annotations": annotations or {},
        },
        "spec": {
            "containers": [
                {
                    "name": name,
                    "image": "registry.example/rt:1",
                    "resources": {"limits": {names.DL_RESOURCE: "1"}, "requests": {names.DL_RESOURCE: "1"}},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
                for name in containers
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }


def rt_pod(value: str = "runtime=2ms,period=10ms,cpus=2", **extra: str) -> dict[str, Any]:
    return k8s_pod({names.CONTAINER_PREFIX + "ctr0": value, **extra})


def args_names(pod: dict[str, Any], nodes: list[str]) -> dict[str, Any]:
    """``ExtenderArgs`` with nodeCacheCapable: true."""
    return {"Pod": pod, "Nodes": None, "NodeNames": nodes}


def args_list(pod: dict[str, Any], nodes: list[str]) -> dict[str, Any]:
    """``ExtenderArgs`` with nodeCacheCapable: false (``NodeList`` without TypeMeta; empty items marshal as null)."""
    return {"Pod": pod, "Nodes": {"metadata": {}, "items": [k8s_node(n) for n in nodes] or None}, "NodeNames": None}


@pytest.fixture
def cluster() -> LedgerCache:
    return LedgerCache(
        [
            ledger("roomy"),  # both CPUs empty
            ledger("full", used=0.85),  # 85% on each CPU: 10% left in all
            ledger("single", cpus=1),  # one CPU: a cpus=2 container does not fit
            ledger("down", ready=False),
        ]
    )


@pytest.fixture
def client(cluster: LedgerCache) -> FlaskClient:
    return create_app(ExtenderConfig(), cache=cluster).test_client()


def post(client: FlaskClient, verb: str, body: Any) -> Any:
    response = client.post(f"/{verb}", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


# -- filter ----------------------------------------------------------------------------------------


def test_filter_keeps_nodes_with_room_and_says_why_others_fail_by_name(client: FlaskClient) -> None:
    reply = post(client, "filter", args_names(rt_pod(), ["roomy", "full", "single", "down", "ghost"]))
    assert set(reply) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    assert reply["NodeNames"] == ["roomy"]
    assert reply["Nodes"] is None
    assert reply["Error"] == ""
    assert reply["FailedNodes"] == {
        "full": "insufficient deadline bandwidth: the pod needs 40.0 percent of a CPU in all, "
        "node has 10.0 percent left",
        "single": "insufficient deadline bandwidth: container ctr0 needs 2 CPUs with 20.0 percent free, node has 1",
    }
    assert reply["FailedAndUnresolvableNodes"] == {
        "down": "node down is not ready for real-time pods (its NodeAllocationState is NotReady)",
        "ghost": "node ghost has no NodeAllocationState (is the rt-dra agent running there?)",
    }


def test_filter_with_a_node_list_returns_the_passing_node_objects(client: FlaskClient) -> None:
    body = args_list(rt_pod(), ["roomy", "full", "ghost"])
    reply = post(client, "filter", body)
    assert reply["NodeNames"] is None
    assert reply["Nodes"]["items"] == [body["Nodes"]["items"][0]]  # the very object sent, unchanged
    assert set(reply["FailedNodes"]) == {"full"}
    assert set(reply["FailedAndUnresolvableNodes"]) == {"ghost"}


@pytest.mark.parametrize("make", [args_names, args_list])
@pytest.mark.parametrize(("placement", "chosen"), [("pack", "half"), ("spread", "roomy")])
def test_pick_passes_only_the_node_the_placement_ranks_first(make: Any, placement: str, chosen: str) -> None:
    cache = LedgerCache([ledger("roomy"), ledger("half", used=0.5), ledger("full", used=0.85)])
    app = create_app(ExtenderConfig(), cache=cache).test_client()
    body = make(rt_pod(**{names.PLACEMENT: placement}), ["roomy", "half", "full", "ghost"])
    reply = post(app, "pick", body)
    filtered = post(app, "filter", body)
    if make is args_names:
        assert filtered["NodeNames"] == ["roomy", "half"]
        assert reply["NodeNames"] == [chosen]
    else:
        assert reply["Nodes"]["items"] == [n for n in body["Nodes"]["items"] if n["metadata"]["name"] == chosen]
    # the nodes it did not pick are neither passed nor failed: they fit, kube-scheduler just need not score
    assert reply["FailedNodes"] == filtered["FailedNodes"] and set(reply["FailedNodes"]) == {"full"}
    assert reply["FailedAndUnresolvableNodes"] == filtered["FailedAndUnresolvableNodes"]


@pytest.mark.parametrize("make", [args_names, args_list])
def test_filter_passes_a_pod_without_rt_request_through_unchanged(client: FlaskClient, make: Any) -> None:
    body = make(k8s_pod(), ["roomy", "full", "down", "ghost"])
    reply = post(client, "filter", body)
    if make is args_names:
        assert reply["NodeNames"] == ["roomy", "full", "down", "ghost"]
    else:
        assert reply["Nodes"]["items"] == body["Nodes"]["items"]
    assert reply["FailedNodes"] == {} and reply["FailedAndUnresolvableNodes"] == {}


@pytest.mark.parametrize("make", [args_names, args_list])
def test_filter_fails_an_invalid_request_on_every_node_as_unresolvable(client: FlaskClient, make: Any) -> None:
    reply = post(client, "filter", make(rt_pod("runtime=20ms,period=10ms"), ["roomy", "ghost"]))
    message = (
        'invalid real-time request: container "ctr0", runtime: must not exceed the period, '
        "got runtime 20ms > period 10ms"
    )
    assert reply["FailedAndUnresolvableNodes"] == {"roomy": message, "ghost": message}
    assert reply["FailedNodes"] == {}
    assert (reply["NodeNames"] or []) == [] and (reply["Nodes"] or {}).get("items", []) == []


@pytest.mark.parametrize("make", [args_names, args_list])
def test_filter_of_an_empty_node_list_is_an_empty_answer(client: FlaskClient, make: Any) -> None:
    reply = post(client, "filter", make(rt_pod(), []))
    assert reply["FailedNodes"] == {} and reply["FailedAndUnresolvableNodes"] == {} and reply["Error"] == ""
    if make is args_names:
        assert reply["NodeNames"] == [] and reply["Nodes"] is None
    else:
        assert reply["Nodes"]["items"] == [] and reply["NodeNames"] is None


def test_filter_judges_the_webhook_spec_annotation_first(client: FlaskClient) -> None:
    spec = json.dumps({"ctr0": {"runtime": 50 * MS, "deadline": 100 * MS, "period": 100 * MS, "cpus": 1}})
    # The user annotation (cpus=2) is ignored once the webhook has written the canonical spec (cpus=1).
    pod = k8s_pod({names.SPEC: spec, names.CONTAINER_PREFIX + "ctr0": "runtime=2ms,period=10ms,cpus=2"})
    reply = post(client, "filter", args_names(pod, ["single", "full"]))
    assert reply["NodeNames"] == ["single"]


def test_filter_with_a_forged_spec_annotation_is_unresolvable(client: FlaskClient) -> None:
    pod = k8s_pod({names.SPEC: '{"ctr0": {"runtime": 1, "deadline": 1, "period": 1, "cpus": 1}}'})
    reply = post(client, "filter", args_names(pod, ["roomy"]))
    assert reply["NodeNames"] == []
    assert "runtime: must be at least 1024ns" in reply["FailedAndUnresolvableNodes"]["roomy"]


# -- prioritize --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [args_names, args_list])
def test_prioritize_scores_every_node_sent_within_0_to_10(client: FlaskClient, make: Any) -> None:
    reply = post(client, "prioritize", make(rt_pod(), ["roomy", "full", "ghost"]))
    assert [entry["Host"] for entry in reply] == ["roomy", "full", "ghost"]
    assert all(set(entry) == {"Host", "Score"} and 0 <= entry["Score"] <= 10 for entry in reply)
    assert reply[1]["Score"] == reply[2]["Score"] == 0  # no fit, no ledger


def test_prioritize_packs_by_default_and_spreads_on_request() -> None:
    cache = LedgerCache([ledger("empty", 4), ledger("half", 4, used=0.5)])
    client = create_app(ExtenderConfig(), cache=cache).test_client()
    pack = {e["Host"]: e["Score"] for e in post(client, "prioritize", args_names(rt_pod(), ["empty", "half"]))}
    spread_pod = rt_pod(**{names.PLACEMENT: "spread"})
    spread = {e["Host"]: e["Score"] for e in post(client, "prioritize", args_names(spread_pod, ["empty", "half"]))}
    assert pack["half"] > pack["empty"]
    assert spread["empty"] > spread["half"]


def test_prioritize_follows_the_configured_default_placement() -> None:
    cache = LedgerCache([ledger("empty", 4), ledger("half", 4, used=0.5)])
    client = create_app(ExtenderConfig(default_placement="spread"), cache=cache).test_client()
    scores = {e["Host"]: e["Score"] for e in post(client, "prioritize", args_names(rt_pod(), ["empty", "half"]))}
    assert scores["empty"] > scores["half"]


def test_prioritize_gives_a_pod_without_rt_request_zero_everywhere(client: FlaskClient) -> None:
    reply = post(client, "prioritize", args_names(k8s_pod(), ["roomy", "full"]))
    assert reply == [{"Host": "roomy", "Score": 0}, {"Host": "full", "Score": 0}]


def test_prioritize_of_an_empty_node_list_is_an_empty_list(client: FlaskClient) -> None:
    assert post(client, "prioritize", args_names(rt_pod(), [])) == []
    assert post(client, "prioritize", args_list(rt_pod(), [])) == []


# -- malformed bodies and the URL prefix ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "body", "message"),
    [
        ("filter", b"", "the request has no body"),
        ("filter", b"{not json", "the body is not valid JSON"),
        ("filter", b"[]", "the body must be a JSON object (ExtenderArgs), got a list"),
        ("filter", b'{"Pod": null, "NodeNames": []}', '"Pod" must be a v1.Pod object, got null'),
        ("filter", b'{"Pod": {}, "Nodes": null, "NodeNames": null}', 'needs "NodeNames"'),
        ("filter", b'{"Pod": {}, "NodeNames": [1]}', '"NodeNames" must be a list of node names'),
        ("prioritize", b'{"Pod": {}, "Nodes": {"items": [{}]}}', '"Nodes.items[0]" must be a v1.Node'),
        ("prioritize", b'{"Pod": {}, "Nodes": []}', '"Nodes" must be a v1.NodeList object, got a list'),
        ("bind", b'{"PodName": "p", "PodNamespace": "ns"}', '"Node" must be a non-empty string, got null'),
        ("bind", b'{"PodName": "p", "PodNamespace": "ns", "Node": "n", "PodUID": 3}', '"PodUID" must be a string'),
    ],
)
def test_a_malformed_body_is_a_400_with_a_clear_message(
    client: FlaskClient, verb: str, body: bytes, message: str
) -> None:
    response = client.post(f"/{verb}", data=body, content_type="application/json")
    assert response.status_code == 400
    assert message in response.get_json()["Error"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_a_wrong_method_or_path_is_not_a_500(client: FlaskClient) -> None:
    assert client.get("/filter").status_code == 405
    assert client.post("/nope", data="{}").status_code == 404


def test_verbs_live_under_the_configured_url_prefix(cluster: LedgerCache) -> None:
    client = create_app(ExtenderConfig(url_prefix="/scheduler/"), cache=cluster).test_client()
    response = client.post("/scheduler/filter", json=args_names(rt_pod(), ["roomy"]))
    assert response.status_code == 200 and response.get_json()["NodeNames"] == ["roomy"]
    assert client.post("/filter", json=args_names(rt_pod(), ["roomy"])).status_code == 404


def test_bind_without_api_access_is_an_error_reply_not_a_failure(client: FlaskClient) -> None:
    reply = post(client, "bind", {"PodName": "p", "PodNamespace": "ns", "PodUID": "u", "Node": "roomy"})
    assert reply == {"Error": "this extender has no API access to bind with"}


# -- health, readiness, metrics ----------------------------------------------------------------------


def test_readyz_waits_for_the_cache_to_sync() -> None:
    cache = LedgerCache(synced=False)
    client = create_app(ExtenderConfig(), cache=cache).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    reply = post(client, "filter", args_names(rt_pod(), ["roomy"]))
    assert "not synced" in reply["Error"]
    cache.replace_all([ledger("roomy")])
    assert client.get("/readyz").status_code == 200
    assert post(client, "filter", args_names(rt_pod(), ["roomy"]))["NodeNames"] == ["roomy"]


def test_an_unsynced_prioritize_fails_instead_of_scoring_every_node_zero() -> None:
    """Each gunicorn worker syncs its own cache; one not synced yet scored every node 0, as if the pod fit
    nowhere (seen in test_extender_bind). kube-scheduler scores without an extender whose prioritize fails."""
    cache = LedgerCache(synced=False)
    client = create_app(ExtenderConfig(), cache=cache).test_client()
    reply = client.post("/prioritize", json=args_names(rt_pod(), ["roomy"]))
    assert reply.status_code == 503 and "not synced" in reply.get_json()["Error"]
    cache.replace_all([ledger("roomy")])
    assert post(client, "prioritize", args_names(rt_pod(), ["roomy"])) == [{"Host": "roomy", "Score": 10}]


def test_metrics_count_requests_and_rejections_by_reason(client: FlaskClient) -> None:
    post(client, "filter", args_names(rt_pod(), ["roomy", "full", "single", "down", "ghost"]))
    post(client, "prioritize", args_names(rt_pod(), ["roomy"]))
    client.post("/filter", data=b"{")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'rtdra_extender_requests_total{code="200",verb="filter"} 1.0' in text
    assert 'rtdra_extender_requests_total{code="400",verb="filter"} 1.0' in text
    assert 'rtdra_extender_requests_total{code="200",verb="prioritize"} 1.0' in text
    assert 'rtdra_extender_filter_rejections_total{reason="insufficient_bandwidth"} 2.0' in text
    assert 'rtdra_extender_filter_rejections_total{reason="no_ledger"} 1.0' in text
    assert 'rtdra_extender_filter_rejections_total{reason="not_ready"} 1.0' in text
    assert 'rtdra_extender_request_duration_seconds_count{verb="filter"} 2.0' in text
    assert "rtdra_extender_cache_nodes 4.0" in text


def test_reasons_carry_no_percent_sign_because_kube_scheduler_formats_them(client: FlaskClient) -> None:
    # kube-scheduler uses a reason as a Go format string (Eventf, fmt.Errorf): "%" would be mangled.
    reply = post(client, "filter", args_names(rt_pod(), ["full", "single"]))
    reasons = reply["FailedNodes"]
    assert set(reasons) == {"full", "single"}  # an empty map would make the check below vacuous
    assert all("%" not in reason for reason in reasons.values())


def test_the_fixture_pods_are_unchanged_by_a_decision(client: FlaskClient) -> None:
    body = args_list(rt_pod(), ["roomy"])
    before = copy.deepcopy(body)
    post(client, "filter", body)
    assert body == before


# -- claim-parameters (pods that bypassed the webhook) ---------------------------------------------------


def claims_pod(**annotations: str) -> dict[str, Any]:
    pod = k8s_pod({f"{names.CLAIM_PARAMETERS_PREFIX}ctr0": "two-cpus", **annotations})
    pod["metadata"]["namespace"] = "team-a"
    return pod


def test_filter_resolves_claim_parameters_of_a_pod_that_bypassed_the_webhook(cluster: LedgerCache) -> None:
    asked: list[tuple[str, str]] = []

    def lookup(namespace: str, name: str) -> dict[str, int] | None:
        asked.append((namespace, name))
        return {"count": 2, "runtime": 2000, "period": 10000} if name == "two-cpus" else None

    app = create_app(ExtenderConfig(), cache=cluster, claim_parameters=lookup).test_client()
    reply = post(app, "filter", args_names(claims_pod(), ["roomy", "full", "single"]))
    assert reply["NodeNames"] == ["roomy"]  # 2 CPUs with 20% each: "full" has 10% left, "single" one CPU
    assert set(reply["FailedNodes"]) == {"full", "single"}
    assert asked and set(asked) == {("team-a", "two-cpus")}
    scores = post(app, "prioritize", args_names(claims_pod(), ["roomy"]))
    assert scores[0]["Score"] > 0


def test_claim_parameters_naming_no_object_are_unresolvable_with_the_name(cluster: LedgerCache) -> None:
    app = create_app(ExtenderConfig(), cache=cluster, claim_parameters=lambda _ns, _name: None).test_client()
    reply = post(app, "filter", args_names(claims_pod(), ["roomy"]))
    assert reply["NodeNames"] == []
    assert (
        "RtClaimParameters 'two-cpus' does not exist in namespace 'team-a'"
        in reply["FailedAndUnresolvableNodes"]["roomy"]
    )


def test_an_unreadable_claim_parameters_object_fails_the_attempt_instead_of_the_pod(cluster: LedgerCache) -> None:
    from extender.claims import ClaimParametersUnavailable

    def broken(namespace: str, name: str) -> None:
        raise ClaimParametersUnavailable(f"cannot read RtClaimParameters {namespace}/{name}: 503 Unavailable")

    app = create_app(ExtenderConfig(), cache=cluster, claim_parameters=broken).test_client()
    reply = post(app, "filter", args_names(claims_pod(), ["roomy"]))
    assert reply == {"Error": "cannot read RtClaimParameters team-a/two-cpus: 503 Unavailable"}
