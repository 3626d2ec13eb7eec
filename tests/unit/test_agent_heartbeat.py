"""The agent's heartbeat: the extender takes no RT pods onto a node whose agent's Lease is missing or stale."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from extender.app import create_app
from extender.cache import LedgerCache
from extender.config import ExtenderConfig
from extender.heartbeats import AgentHeartbeats
from rtdra import names
from rtdra.kube import StoreError
from rtdra.leases import LeaseRenewer, lease_node
from rtdra.ledger import NodeLedger

CAP = 943719
BOUND_S = 40.0


def lease(node: str, renew_time: str, holder: str | None = None) -> dict[str, Any]:
    """A Lease as kube-apiserver returns it."""
    return {
        "kind": "Lease",
        "apiVersion": "coordination.k8s.io/v1",
        "metadata": {
            "name": f"rtdra-agent-{node}",
            "namespace": "rt-dra",
            "uid": f"uid-{node}",
            "resourceVersion": "812",
            "creationTimestamp": "2026-11-30T11:00:00Z",
        },
        "spec": {
            "holderIdentity": holder or node,
            "leaseDurationSeconds": 40,
            "acquireTime": "2026-11-30T11:00:00.000000Z",
            "renewTime": renew_time,
        },
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rt_pod() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "uid-p",
            "annotations": {names.CONTAINER_PREFIX + "ctr0": "runtime=2ms,period=10ms"},
        },
        "spec": {"containers": [{"name": "ctr0"}]},
    }


def filter_(heartbeats: AgentHeartbeats, nodes: list[str]) -> dict[str, Any]:
    cache = LedgerCache([NodeLedger(node, {0: CAP, 1: CAP}) for node in nodes])
    app = create_app(ExtenderConfig(), cache=cache, heartbeats=heartbeats).test_client()
    body = {"Pod": rt_pod(), "Nodes": None, "NodeNames": nodes}
    reply = app.post("/filter", data=json.dumps(body), content_type="application/json")
    assert reply.status_code == 200
    result: dict[str, Any] = reply.get_json()
    return result


def test_filter_takes_a_fresh_node_and_rejects_a_stale_or_leaseless_one_saying_why() -> None:
    clock = Clock()
    heartbeats = AgentHeartbeats("rt-dra", BOUND_S, clock=clock)
    heartbeats.replace_all([lease("fresh", "2026-11-30T11:45:00.000000Z"), lease("stale", "2026-11-30T11:44:00Z")])
    clock.now += 30
    heartbeats.apply("MODIFIED", lease("fresh", "2026-11-30T11:45:30.000000Z"))  # renewed
    heartbeats.apply("MODIFIED", lease("stale", "2026-11-30T11:44:00Z"))  # rewritten, but not renewed
    clock.now += 15  # fresh: renewed 15 s ago; stale: 45 s of silence

    reply = filter_(heartbeats, ["fresh", "stale", "gone"])

    assert reply["NodeNames"] == ["fresh"]
    assert reply["FailedNodes"] == {}
    assert reply["FailedAndUnresolvableNodes"] == {
        "stale": "node stale is not ready for real-time pods "
        "(its rt-dra agent has not renewed its Lease rt-dra/rtdra-agent-stale for more than 40s)",
        "gone": "node gone is not ready for real-time pods (its rt-dra agent has no Lease rt-dra/rtdra-agent-gone)",
    }


def test_a_deleted_lease_makes_the_node_leaseless_and_a_renewal_brings_it_back() -> None:
    clock = Clock()
    heartbeats = AgentHeartbeats("rt-dra", BOUND_S, clock=clock)
    heartbeats.replace_all([lease("n1", "2026-11-30T11:45:00.000000Z")])
    assert heartbeats.silence("n1") is None
    heartbeats.apply("DELETED", lease("n1", "2026-11-30T11:45:00.000000Z"))
    assert "has no Lease" in (heartbeats.silence("n1") or "")
    clock.now += 100
    heartbeats.apply("ADDED", lease("n1", "2026-11-30T11:46:40.000000Z"))
    assert heartbeats.silence("n1") is None


def test_an_agent_heard_again_after_silence_sends_pending_pods_back_to_the_scheduler() -> None:
    """The filter turned pods away for the silence; nothing else would tell kube-scheduler the node is back."""
    clock = Clock()
    rooms: list[str] = []
    heartbeats = AgentHeartbeats("rt-dra", BOUND_S, clock=clock, on_room=lambda: rooms.append("room"))
    heartbeats.replace_all([lease("n1", "2026-11-30T11:45:00.000000Z")])
    clock.now += 20
    heartbeats.apply("MODIFIED", lease("n1", "2026-11-30T11:45:20.000000Z"))  # alive all along: no news
    assert rooms == []
    clock.now += 60
    assert heartbeats.silence("n1") is not None
    heartbeats.apply("MODIFIED", lease("n1", "2026-11-30T11:46:20.000000Z"))  # back after 60 s of silence
    assert rooms == ["room"]
    heartbeats.apply("ADDED", lease("n2", "2026-11-30T11:46:20.000000Z"))  # a new agent
    assert rooms == ["room", "room"]


def test_a_relist_keeps_counting_the_silence_of_a_lease_that_was_not_renewed() -> None:
    clock = Clock()
    heartbeats = AgentHeartbeats("rt-dra", BOUND_S, clock=clock)
    heartbeats.replace_all([lease("n1", "2026-11-30T11:45:00.000000Z")])
    clock.now += 30
    heartbeats.replace_all([lease("n1", "2026-11-30T11:45:00.000000Z")])  # the watch expired: listed again
    clock.now += 11
    assert "not renewed" in (heartbeats.silence("n1") or "")


def test_only_an_agents_lease_held_by_its_own_node_counts() -> None:
    assert lease_node(lease("n1", "t")) == "n1"
    assert lease_node(lease("n1", "t", holder="n2")) is None
    other = lease("n1", "t")
    other["metadata"]["name"] = "kube-scheduler"
    assert lease_node(other) is None


def test_filter_waits_for_the_first_list_of_leases() -> None:
    heartbeats = AgentHeartbeats("rt-dra", BOUND_S)
    reply = filter_(heartbeats, ["n1"])
    assert reply["Error"] == "the extender has not listed the agents' Leases yet; try again"


class Leases:
    """``CoordinationV1Api`` as the agent's renewer uses it: one Lease, resourceVersion-checked replaces."""

    def __init__(self) -> None:
        self.stored: dict[str, Any] | None = None
        self.calls: list[str] = []

    def _reply(self, obj: dict[str, Any]) -> Any:
        return type("Reply", (), {"data": json.dumps(obj)})()

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Any:
        self.calls.append("read")
        if self.stored is None:
            raise ApiException(status=404, reason="Not Found")
        return self._reply(self.stored)

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        self.calls.append("create")
        self.stored = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
        return self._reply(self.stored)

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        self.calls.append("replace")
        assert self.stored is not None
        if body["metadata"]["resourceVersion"] != self.stored["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        version = str(int(self.stored["metadata"]["resourceVersion"]) + 1)
        self.stored = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
        return self._reply(self.stored)


def test_the_agent_creates_its_lease_then_renews_it_with_one_write_and_reads_again_after_a_conflict() -> None:
    leases = Leases()
    renewer = LeaseRenewer(client.ApiClient(), "rt-dra", "n1", duration_s=40)
    renewer.coordination = leases  # type: ignore[assignment]
    t0 = dt.datetime(2026, 11, 30, 11, 45, 0, 123456, tzinfo=dt.UTC)

    renewer.renew(t0)
    renewer.renew(t0 + dt.timedelta(seconds=10))
    assert leases.calls == ["read", "create", "replace"]
    assert leases.stored is not None
    assert leases.stored["metadata"]["name"] == "rtdra-agent-n1"
    assert leases.stored["spec"] == {
        "holderIdentity": "n1",
        "leaseDurationSeconds": 40,
        "acquireTime": "2026-11-30T11:45:00.123456Z",
        "renewTime": "2026-11-30T11:45:10.123456Z",
    }
    assert lease_node(leases.stored) == "n1"

    leases.stored["metadata"]["resourceVersion"] = "99"  # someone else wrote it
    with pytest.raises(StoreError) as refused:
        renewer.renew(t0 + dt.timedelta(seconds=20))
    assert refused.value.status == 409
    renewer.renew(t0 + dt.timedelta(seconds=30))
    assert leases.calls[-3:] == ["replace", "read", "replace"]
    assert leases.stored["spec"]["renewTime"] == "2026-11-30T11:45:30.123456Z"
