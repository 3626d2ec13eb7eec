"""DRA mode, cluster side, on the real control plane (kube-apiserver, kube-scheduler, kube-controller-manager v1.37).

The stack runs the webhook (registered through the shipped MutatingWebhookConfiguration,
with its ResourceClaim and ResourceClaimTemplate entries), the DeviceClass from the shipped
manifests, and the extender with its optional DRA scoring entry in kube-scheduler. The nodes
are Node objects without a kubelet, each with the ResourceSlice its agent would publish
(written here: the node side publishes them in production), so kube-scheduler's own DRA
plugin allocates the claims: what is checked is what it wrote into the claims'
``status.allocation.devices.results``. Consumable capacity (``DRAConsumableCapacity``) is on
by default in 1.37; the harness passes no feature gates, and the first test proves the API
server keeps the fields it gates.
"""

from __future__ import annotations

import contextlib
import copy
import json
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from hack.stack import Stack, wait_for
from rtdra import dra, names
from rtdra.bandwidth import BW_UNIT
from tests.e2e.stacks import module_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
#: A CPU's capacity in the slices written here: 95% of a CPU, as a default RT throttling leaves it.
CAPACITY = 95 * BW_UNIT // 100


@pytest.fixture(scope="module")
def stack(k8s_binaries: Any) -> Iterator[Stack]:
    yield from module_stack(k8s_binaries, [], "rtdra-dra-", dra_scoring=True)


@pytest.fixture
def resource(stack: Stack) -> client.ResourceV1Api:
    return client.ResourceV1Api(stack.api)


@pytest.fixture
def ns(stack: Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    """An opted-in namespace; its pods are force-deleted after the test (no kubelet confirms a deletion)."""
    core = client.CoreV1Api(stack.api)
    name = "dra-" + request.node.name.replace("_", "-")[5:45].strip("-").lower()
    core.create_namespace({"metadata": {"name": name, "labels": {names.NAMESPACE_OPT_IN_LABEL: "true"}}})
    yield name
    core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    wait_for(f"pods of {name} gone", lambda: not core.list_namespaced_pod(name).items)
    core.delete_namespace(name)


@pytest.fixture
def rt_nodes(stack: Stack) -> Iterator[Any]:
    """``make(prefix, count, cpus)``: Node objects with the ResourceSlice their agent would publish."""
    made: list[str] = []
    api = client.ResourceV1Api(stack.api)

    def make(prefix: str, count: int, cpus: int) -> list[str]:
        nodes = [f"{prefix}-{i}" for i in range(count)]
        for node in nodes:
            stack.cp.create_node(node, cpu=str(cpus))
            made.append(node)
            api.create_resource_slice(resource_slice(node, cpus))
        return nodes

    yield make
    for node in made:
        with contextlib.suppress(ApiException):
            api.delete_resource_slice(f"{node}-rt")
        stack.cp.delete_node(node)


def resource_slice(node: str, cpus: int, capacity: int = CAPACITY) -> dict[str, Any]:
    """The slice of the DRA contract (rtdra.dra): one pool per node, a device per CPU sharing its bandwidth."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-rt"},
        "spec": {
            "driver": dra.DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": dra.device_name(cpu),
                    "allowMultipleAllocations": True,
                    "capacity": {dra.CAPACITY: {"value": str(capacity)}},
                    "attributes": {dra.ATTRIBUTE_CPU: {"int": cpu}},
                }
                for cpu in range(cpus)
            ],
        },
    }


def parameters(count: int = 1, runtime: int = 1000, period: int = 10000, **extra: int) -> dict[str, Any]:
    return {
        "apiVersion": dra.PARAMETERS_API_VERSION,
        "kind": dra.PARAMETERS_KIND,
        "spec": {"count": count, "runtime": runtime, "period": period, **extra},
    }


def claim_spec(params: Mapping[str, Any] | None, request: str = "rt", **exactly: Any) -> dict[str, Any]:
    devices: dict[str, Any] = {
        "requests": [{"name": request, "exactly": {"deviceClassName": dra.DEVICE_CLASS, **exactly}}],
    }
    if params is not None:
        devices["config"] = [{"requests": [request], "opaque": {"driver": dra.DRIVER, "parameters": params}}]
    return {"devices": devices}


def claim(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name}, "spec": spec}


def template(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name},
        "spec": {"spec": spec},
    }


def pod_with_template(name: str, template_name: str, placement: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if placement is not None:
        metadata["annotations"] = {names.PLACEMENT: placement}
    return {
        "metadata": metadata,
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "resources": {"claims": [{"name": "rt"}]}}],
            "resourceClaims": [{"name": "rt", "resourceClaimTemplateName": template_name}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def denial(call: Any, *args: Any) -> str:
    with pytest.raises(ApiException) as info:
        call(*args)
    assert info.value.status == 422, info.value.body
    return str(json.loads(info.value.body)["message"])


def only_request(obj: Any) -> dict[str, Any]:
    spec = obj["spec"]["spec"] if "spec" in obj["spec"] else obj["spec"]  # a template, or a claim
    [request] = spec["devices"]["requests"]
    return dict(request["exactly"])


def read_claim(resource: client.ResourceV1Api, ns: str, name: str) -> dict[str, Any]:
    response = resource.read_namespaced_resource_claim(name, ns, _preload_content=False)
    return dict(json.loads(response.data))


def claims_of(resource: client.ResourceV1Api, ns: str) -> list[dict[str, Any]]:
    response = resource.list_namespaced_resource_claim(ns, _preload_content=False)
    return list(json.loads(response.data)["items"])


def consumed_per_cpu(claims: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Σ consumed bandwidth per (node, device), from the allocations kube-scheduler wrote."""
    used: dict[tuple[str, str], int] = defaultdict(int)
    for c in claims:
        allocation = (c.get("status") or {}).get("allocation")
        if not allocation:
            continue
        for result in allocation["devices"]["results"]:
            assert result["driver"] == dra.DRIVER
            used[result["pool"], result["device"]] += dra.parse_quantity(result["consumedCapacity"][dra.CAPACITY])
    return used


# --------------------------------------------------------------------------- the webhook


def test_the_webhook_writes_count_and_bandwidth_of_a_claim(stack: Stack, resource: client.ResourceV1Api, ns: str):
    created = resource.create_namespaced_resource_claim(ns, claim("c", claim_spec(parameters(2, 1000, 10000))))
    exactly = only_request(read_claim(resource, ns, created.metadata.name))
    assert exactly["allocationMode"] == "ExactCount"
    assert exactly["count"] == 2
    # 1 ms every 10 ms = (1000 << 20) // 10000 kernel units, stored (so the feature gate is on)
    assert dra.parse_quantity(exactly["capacity"]["requests"][dra.CAPACITY]) == (1000 << 20) // 10000


def test_a_short_deadline_books_the_density(stack: Stack, resource: client.ResourceV1Api, ns: str):
    resource.create_namespaced_resource_claim(ns, claim("c", claim_spec(parameters(1, 1000, 10000, deadline=2000))))
    exactly = only_request(read_claim(resource, ns, "c"))
    assert dra.parse_quantity(exactly["capacity"]["requests"][dra.CAPACITY]) == (1000 << 20) // 2000


def test_the_webhook_completes_a_template(stack: Stack, resource: client.ResourceV1Api, ns: str):
    resource.create_namespaced_resource_claim_template(ns, template("t", claim_spec(parameters(3, 500, 1000))))
    response = resource.read_namespaced_resource_claim_template("t", ns, _preload_content=False)
    exactly = only_request(json.loads(response.data))
    assert (exactly["count"], dra.parse_quantity(exactly["capacity"]["requests"][dra.CAPACITY])) == (3, BW_UNIT // 2)


def test_a_request_of_our_class_without_parameters_is_denied_saying_what_to_add(
    stack: Stack, resource: client.ResourceV1Api, ns: str
):
    message = denial(resource.create_namespaced_resource_claim, ns, claim("c", claim_spec(None)))
    assert 'request "rt" of device class rt.resource.example.com has no RtClaimParameters' in message
    assert '"kind": "RtClaimParameters"' in message
    message = denial(resource.create_namespaced_resource_claim_template, ns, template("t", claim_spec(None)))
    assert "has no RtClaimParameters" in message


def test_invalid_parameters_are_denied_with_the_annotations_words(
    stack: Stack, resource: client.ResourceV1Api, ns: str
):
    message = denial(resource.create_namespaced_resource_claim, ns, claim("c", claim_spec(parameters(1, 20000, 10000))))
    assert 'request "rt", runtime: must not exceed the period, got runtime 20ms > period 10ms' in message
    message = denial(resource.create_namespaced_resource_claim, ns, claim("c", claim_spec(parameters(1, 10, 50))))
    assert 'request "rt", period: must be between 100us and' in message


def test_a_count_or_capacity_that_contradicts_the_parameters_is_denied(
    stack: Stack, resource: client.ResourceV1Api, ns: str
):
    message = denial(resource.create_namespaced_resource_claim, ns, claim("c", claim_spec(parameters(2), count=3)))
    assert "count 3 contradicts RtClaimParameters count 2" in message
    contradicting = claim_spec(parameters(1, 1000, 10000), capacity={"requests": {dra.CAPACITY: "1Mi"}})
    message = denial(resource.create_namespaced_resource_claim, ns, claim("c", contradicting))
    assert f"capacity {dra.CAPACITY} 1Mi contradicts RtClaimParameters" in message
    message = denial(
        resource.create_namespaced_resource_claim, ns, claim("c", claim_spec(parameters(2), allocationMode="All"))
    )
    assert "allocationMode All contradicts RtClaimParameters" in message


def test_a_claim_that_already_says_what_the_webhook_would_write_is_kept(
    stack: Stack, resource: client.ResourceV1Api, ns: str
):
    agreeing = claim_spec(parameters(2, 1000, 10000), count=2, capacity={"requests": {dra.CAPACITY: "104857"}})
    resource.create_namespaced_resource_claim(ns, claim("c", agreeing))
    exactly = only_request(read_claim(resource, ns, "c"))
    assert exactly["count"] == 2 and dra.parse_quantity(exactly["capacity"]["requests"][dra.CAPACITY]) == 104857


def test_claims_of_other_classes_are_untouched(stack: Stack, resource: client.ResourceV1Api, ns: str):
    other = {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}]}}
    resource.create_namespaced_resource_claim(ns, claim("other", other))
    assert "capacity" not in only_request(read_claim(resource, ns, "other"))


def test_outside_opted_in_namespaces_a_claim_is_stored_as_written_and_takes_whole_cpus(
    stack: Stack, resource: client.ResourceV1Api, rt_nodes: Any
):
    """The webhook is not called there (namespaceSelector, as for pods). Upstream behaviour this relies on:
    kube-apiserver defaults count to 1 (before admission), and the allocator books a request without a
    capacity request at the device's whole capacity - so such a claim cannot overcommit a CPU."""
    [node] = rt_nodes("plain", 1, 2)
    core = client.CoreV1Api(stack.api)
    plain_ns = "dra-plain"
    core.create_namespace({"metadata": {"name": plain_ns}})
    try:
        resource.create_namespaced_resource_claim_template(plain_ns, template("t", claim_spec(parameters(2))))
        for i in range(3):
            core.create_namespaced_pod(plain_ns, pod_with_template(f"p-{i}", "t"))
        wait_scheduled_or_unschedulable(core, plain_ns, 3)
        claims = claims_of(resource, plain_ns)
        assert all(only_request(c) == {"deviceClassName": dra.DEVICE_CLASS, "allocationMode": "ExactCount",
                                       "count": 1} for c in claims)  # fmt: skip
        used = consumed_per_cpu(claims)
        assert used == {(node, dra.device_name(0)): CAPACITY, (node, dra.device_name(1)): CAPACITY}
    finally:
        core.delete_collection_namespaced_pod(plain_ns, grace_period_seconds=0)
        wait_for(f"pods of {plain_ns} gone", lambda: not core.list_namespaced_pod(plain_ns).items)
        core.delete_namespace(plain_ns)


def test_a_resource_quota_counts_the_cpus_the_webhook_wrote(stack: Stack, resource: client.ResourceV1Api, ns: str):
    """Quota admission runs after the mutating webhooks: it sees the count taken from the parameters."""
    quota = f"{dra.DEVICE_CLASS}.deviceclass.resource.k8s.io/devices"
    core = client.CoreV1Api(stack.api)
    core.create_namespaced_resource_quota(ns, {"metadata": {"name": "rt"}, "spec": {"hard": {quota: "3"}}})
    wait_for("quota status", lambda: (core.read_namespaced_resource_quota("rt", ns).status.hard or {}).get(quota))
    resource.create_namespaced_resource_claim(ns, claim("c0", claim_spec(parameters(2))))
    with pytest.raises(ApiException) as info:
        resource.create_namespaced_resource_claim(ns, claim("c1", claim_spec(parameters(2))))
    assert info.value.status == 403
    assert f"requested: {quota}=2, used: {quota}=2, limited: {quota}=3" in json.loads(info.value.body)["message"]


# --------------------------------------------------------------------------- allocation by kube-scheduler


def wait_scheduled_or_unschedulable(core: client.CoreV1Api, ns: str, count: int, timeout: float = 300) -> None:
    """Until each of the namespace's ``count`` pods is bound or marked Unschedulable by kube-scheduler."""

    def settled() -> bool:
        pods = core.list_namespaced_pod(ns).items
        done = 0
        for p in pods:
            conditions = {c.type: c for c in p.status.conditions or []}
            scheduled = conditions.get("PodScheduled")
            if p.spec.node_name or (scheduled is not None and scheduled.reason == "Unschedulable"):
                done += 1
        return len(pods) == count and done == count

    wait_for(f"{count} pods of {ns} scheduled or unschedulable", settled, timeout=timeout, interval=1)


def test_claims_land_on_distinct_cpus_within_each_cpus_capacity(
    stack: Stack, resource: client.ResourceV1Api, ns: str, rt_nodes: Any
):
    [node] = rt_nodes("alloc", 1, 4)
    core = client.CoreV1Api(stack.api)
    # 30% on each of 2 CPUs per pod: 4 CPUs x 95% hold 3 x 30% each, so 6 pods fit and the 7th does not.
    resource.create_namespaced_resource_claim_template(ns, template("t", claim_spec(parameters(2, 3000, 10000))))
    for i in range(7):
        core.create_namespaced_pod(ns, pod_with_template(f"p-{i}", "t"))
    wait_scheduled_or_unschedulable(core, ns, 7)
    claims = claims_of(resource, ns)
    allocated = [c for c in claims if (c.get("status") or {}).get("allocation")]
    assert len(allocated) == 6
    for c in allocated:
        devices = [r["device"] for r in c["status"]["allocation"]["devices"]["results"]]
        assert len(devices) == 2 and len(set(devices)) == 2, devices  # distinct CPUs
    used = consumed_per_cpu(claims)
    assert set(used) <= {(node, dra.device_name(cpu)) for cpu in range(4)}
    assert all(total <= CAPACITY for total in used.values()), used
    assert sum(used.values()) == 6 * 2 * ((3000 << 20) // 10000)


def test_a_burst_of_200_claims_for_too_little_bandwidth_overcommits_no_cpu(
    stack: Stack, resource: client.ResourceV1Api, ns: str, rt_nodes: Any
):
    nodes = rt_nodes("burst", 3, 2)
    core = client.CoreV1Api(stack.api)
    # 3 nodes x 2 CPUs x 95%: room for 3 claims of 30% per CPU, 18 in all; 200 pods race for them.
    resource.create_namespaced_resource_claim_template(ns, template("t", claim_spec(parameters(1, 3000, 10000))))
    for i in range(200):
        core.create_namespaced_pod(ns, pod_with_template(f"p-{i:03d}", "t"))
    wait_scheduled_or_unschedulable(core, ns, 200, timeout=600)
    used = consumed_per_cpu(claims_of(resource, ns))
    over = {cpu: total for cpu, total in used.items() if total > CAPACITY}
    assert not over, over
    assert set(n for n, _ in used) <= set(nodes)
    pods = core.list_namespaced_pod(ns).items
    bound = [p for p in pods if p.spec.node_name]
    assert len(bound) == 18  # every CPU as full as 30% steps allow, none more
    pending = [p for p in pods if not p.spec.node_name]
    for p in pending:
        [scheduled] = [c for c in p.status.conditions or [] if c.type == "PodScheduled"]
        assert scheduled.reason == "Unschedulable"
        assert "cannot allocate all claims" in scheduled.message, scheduled.message


# --------------------------------------------------------------------------- the extender's DRA scoring


def extender_view(stack: Stack) -> dict[str, dict[str, int]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.extender_port}/dra/nodes", timeout=5) as r:
        return dict(json.loads(r.read()))


def place_one_by_one(stack: Stack, ns: str, count: int, placement: str) -> list[str]:
    """Create pods one at a time, each after the extender has seen the previous one's claim; their nodes."""
    core = client.CoreV1Api(stack.api)
    resource = client.ResourceV1Api(stack.api)
    per_pod = (1000 << 20) // 10000
    placed = []
    for i in range(count):
        name = f"{placement}-{i}"
        core.create_namespaced_pod(ns, pod_with_template(name, placement, placement))
        node = wait_for(f"{name} bound", lambda n=name: core.read_namespaced_pod(n, ns).spec.node_name)
        placed.append(node)
        expected = (sum(1 for p in placed if p == node)) * per_pod
        wait_for(
            f"the extender sees {name}'s claim",
            lambda n=node, e=expected: extender_view(stack).get(n, {}).get("used", 0) >= e,
        )
    # Claims of earlier pods may still await the garbage collector (their pods are gone): count these pods' own.
    own = {c["metadata"]["name"] for c in claims_of(resource, ns) if c["metadata"]["name"].startswith(f"{placement}-")}
    assert len(own) == count, own
    return placed


def test_the_extender_scores_dra_pods_by_their_placement(
    stack: Stack, resource: client.ResourceV1Api, ns: str, rt_nodes: Any
):
    nodes = rt_nodes("score", 2, 2)
    for placement in ("pack", "spread"):
        resource.create_namespaced_resource_claim_template(ns, template(placement, claim_spec(parameters(1))))
    view = extender_view(stack)
    assert all(view[n] == {"used": 0, "capacity": 2 * CAPACITY} for n in nodes), view
    # pack: every pod joins the first one's node; spread: they alternate.
    packed = place_one_by_one(stack, ns, 4, "pack")
    assert len(set(packed)) == 1, packed
    core = client.CoreV1Api(stack.api)
    core.delete_collection_namespaced_pod(ns, grace_period_seconds=0)
    wait_for("pack pods gone", lambda: not core.list_namespaced_pod(ns).items)
    wait_for("their claims released", lambda: all(extender_view(stack)[n]["used"] == 0 for n in nodes))
    spread = place_one_by_one(stack, ns, 4, "spread")
    assert sorted(spread) == sorted(nodes * 2) and spread[0] != spread[1], spread


# --------------------------------------------------------------------------- the demo


def test_rt_test5_becomes_a_valid_claim_that_the_scheduler_allocates(
    stack: Stack, resource: client.ResourceV1Api, ns: str, rt_nodes: Any
):
    [node] = rt_nodes("demo", 1, 2)
    docs = [d for d in yaml.safe_load_all((REPO / "demo" / "rt-test5.yaml").read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) >= {"ResourceClaimTemplate", "Pod"}
    for doc in docs:
        if doc["kind"] == "Namespace":
            continue
        body = copy.deepcopy(doc)
        body["metadata"]["namespace"] = ns
        if doc["kind"] == "ResourceClaimTemplate":
            resource.create_namespaced_resource_claim_template(ns, body)
        elif doc["kind"] == "Pod":
            client.CoreV1Api(stack.api).create_namespaced_pod(ns, body)
    pod_name = kinds["Pod"]["metadata"]["name"]
    core = client.CoreV1Api(stack.api)
    assert wait_for("rt-test5 bound", lambda: core.read_namespaced_pod(pod_name, ns).spec.node_name) == node
    [made] = claims_of(resource, ns)
    exactly = only_request(made)
    params = kinds["ResourceClaimTemplate"]["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"]["spec"]
    assert exactly["count"] == params["count"]
    expected = (params["runtime"] << 20) // params["period"]
    assert dra.parse_quantity(exactly["capacity"]["requests"][dra.CAPACITY]) == expected
    results = made["status"]["allocation"]["devices"]["results"]
    assert len({r["device"] for r in results}) == params["count"]


def dra_prioritize_calls(stack: Stack) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.extender_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "rtdra_extender_requests_total" and sample.labels.get("verb") == "dra/prioritize":
                return float(sample.value)
    return 0.0


def test_only_pods_with_claims_reach_the_dra_scoring(
    stack: Stack, resource: client.ResourceV1Api, ns: str, rt_nodes: Any
):
    rt_nodes("route", 2, 2)
    core = client.CoreV1Api(stack.api)
    before = dra_prioritize_calls(stack)
    for i in range(3):
        core.create_namespaced_pod(
            ns, {"metadata": {"name": f"plain-{i}"}, "spec": {"containers": [{"name": "a", "image": "busybox"}]}}
        )
    for i in range(3):
        wait_for(f"plain-{i} bound", lambda n=f"plain-{i}": core.read_namespaced_pod(n, ns).spec.node_name)
    assert dra_prioritize_calls(stack) == before  # the webhook marked none of them: never sent
    resource.create_namespaced_resource_claim_template(ns, template("t", claim_spec(parameters(1))))
    core.create_namespaced_pod(ns, pod_with_template("dra", "t"))
    wait_for("dra bound", lambda: core.read_namespaced_pod("dra", ns).spec.node_name)
    assert dra_prioritize_calls(stack) > before
