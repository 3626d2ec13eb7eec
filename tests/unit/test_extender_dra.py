"""DRA mode in the extender: bandwidth per node from ResourceSlices and allocated claims, scores by placement.

Objects are resource.k8s.io/v1 JSON as kube-apiserver serves them (quantities as strings).
"""

from __future__ import annotations

import json
from typing import Any

from extender.app import create_app
from extender.cache import LedgerCache
from extender.config import ExtenderConfig
from extender.dra import DraUsage, prioritize_dra
from rtdra import dra, names
from rtdra.bandwidth import BW_UNIT

CPU = 95 * BW_UNIT // 100
TENTH = BW_UNIT // 10


def slice_(node: str, cpus: int, generation: int = 1, name: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name or f"{node}-rt"},
        "spec": {
            "driver": dra.DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": 1},
            "devices": [
                {"name": dra.device_name(c), "capacity": {dra.CAPACITY: {"value": str(CPU)}}} for c in range(cpus)
            ],
        },
    }


def claim(name: str, count: int, bw: int, node: str | None = None, ns: str = "ns") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "rt",
                        "exactly": {
                            "deviceClassName": dra.DEVICE_CLASS,
                            "count": count,
                            "capacity": {"requests": {dra.CAPACITY: str(bw)}},
                        },
                    }
                ]
            }
        },
    }
    if node is not None:
        results = [
            {
                "request": "rt",
                "driver": dra.DRIVER,
                "pool": node,
                "device": dra.device_name(c),
                "consumedCapacity": {dra.CAPACITY: str(bw)},
                "shareID": f"s{c}",
            }
            for c in range(count)
        ]
        obj["status"] = {"allocation": {"devices": {"results": results}}}
    return obj


def pod(claim_name: str | None, placement: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": [{"name": "a"}]}}
    if placement:
        body["metadata"]["annotations"] = {names.PLACEMENT: placement}
    if claim_name is not None:
        body["spec"]["resourceClaims"] = [{"name": "rt", "resourceClaimTemplateName": "t"}]
        body["status"] = {"resourceClaimStatuses": [{"name": "rt", "resourceClaimName": claim_name}]}
    return body


def usage_with(*claims: dict[str, Any]) -> DraUsage:
    usage = DraUsage()
    usage.replace_slices([slice_("a", 2), slice_("b", 2)])
    usage.replace_claims(list(claims))
    return usage


def scores(usage: DraUsage, body: dict[str, Any]) -> dict[str, int]:
    return {h["Host"]: h["Score"] for h in prioritize_dra(body, ["a", "b", "c"], usage)}


def test_used_bandwidth_follows_allocations_through_their_lifecycle() -> None:
    usage = usage_with()
    assert usage.node("a") == (0, 2 * CPU)
    usage.apply_claim("ADDED", claim("x", 2, TENTH))
    assert usage.node("a") == (0, 2 * CPU)  # pending: asks, holds nothing
    usage.apply_claim("MODIFIED", claim("x", 2, TENTH, node="a"))
    usage.apply_claim("MODIFIED", claim("x", 2, TENTH, node="a"))  # a repeated event counts once
    assert usage.node("a") == (2 * TENTH, 2 * CPU)
    usage.apply_claim("DELETED", claim("x", 2, TENTH, node="a"))
    assert usage.node("a") == (0, 2 * CPU)
    assert usage.snapshot() == {"a": {"used": 0, "capacity": 2 * CPU}, "b": {"used": 0, "capacity": 2 * CPU}}


def test_only_the_newest_generation_of_a_pool_counts() -> None:
    usage = DraUsage()
    usage.replace_slices([slice_("a", 2, generation=1, name="old"), slice_("a", 4, generation=2, name="new")])
    assert usage.node("a") == (0, 4 * CPU)
    usage.apply_slice("DELETED", slice_("a", 4, generation=2, name="new"))
    assert usage.node("a") == (0, 2 * CPU)


def test_pack_prefers_the_fuller_node_and_spread_the_emptier() -> None:
    usage = usage_with(claim("held", 2, 4 * TENTH, node="a"), claim("mine", 1, TENTH))
    packed = scores(usage, pod("mine"))
    spread = scores(usage, pod("mine", "spread"))
    assert packed["a"] > packed["b"]
    assert spread["b"] > spread["a"]
    assert packed["c"] == spread["c"] == 0  # no slice of ours: lowest


def test_plain_pods_and_pods_of_other_claims_get_the_same_score_everywhere() -> None:
    usage = usage_with(claim("held", 2, 4 * TENTH, node="a"))
    assert set(scores(usage, pod(None)).values()) == {0}
    gpu = {"metadata": {"name": "g", "namespace": "ns"}, "spec": {"devices": {"requests": [
        {"name": "g", "exactly": {"deviceClassName": "gpu.example.com"}}]}}}  # fmt: skip
    usage.apply_claim("ADDED", gpu)
    assert set(scores(usage, pod("g")).values()) == {0}
    assert set(scores(usage, pod("not-seen-yet")).values()) == {0}


def test_the_dra_verb_is_served_only_when_enabled() -> None:
    usage = usage_with(claim("held", 2, 4 * TENTH, node="a"), claim("mine", 1, TENTH))
    body = json.dumps({"Pod": pod("mine"), "Nodes": None, "NodeNames": ["a", "b"]})
    on = create_app(ExtenderConfig(dra_scoring=True), cache=LedgerCache(), dra_usage=usage).test_client()
    reply = on.post("/dra/prioritize", data=body)
    assert reply.status_code == 200
    assert {h["Host"]: h["Score"] for h in reply.get_json()}["a"] > 0
    assert on.get("/dra/nodes").get_json()["a"] == {"used": 8 * TENTH, "capacity": 2 * CPU}
    off = create_app(ExtenderConfig(), cache=LedgerCache(), dra_usage=usage).test_client()
    assert off.post("/dra/prioritize", data=body).status_code == 404


def test_a_claim_the_watch_has_not_brought_is_read() -> None:
    store = {("ns", "new"): claim("new", 1, TENTH), ("ns", "done"): claim("done", 1, TENTH, node="b")}
    usage = DraUsage(reader=lambda ns, name: store.get((ns, name)))
    usage.replace_slices([slice_("a", 2), slice_("b", 2)])
    usage.replace_claims([claim("held", 2, 4 * TENTH, node="a")])
    assert usage.pod_demand(pod("new")) == TENTH
    assert usage.pod_demand(pod("done")) == 0  # allocated already: nothing to place
    assert usage.pod_demand(pod("gone")) == 0

    def broken(ns: str, name: str) -> dict[str, Any]:
        raise OSError("connection refused")

    usage.reader = broken
    assert set(scores(usage, pod("new")).values()) == {0}  # no opinion rather than an error
