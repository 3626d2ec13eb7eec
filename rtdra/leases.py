"""The node agent's heartbeat: a ``coordination.k8s.io/v1`` Lease per node that its agent renews.

A NodeAllocationState says ``Ready`` until its agent says otherwise, and a
SIGKILLed agent says nothing: the node would keep taking real-time pods it
can no longer apply. So the agent also renews the Lease
``rtdra-agent-<node>`` in the driver namespace (``holderIdentity`` the node)
every few seconds, and the extender (``extender.heartbeats``) treats a node
whose Lease is missing, or was not renewed within a bound, as not ready.

This module holds what both sides share - the Lease's name and wire form -
and :class:`LeaseRenewer`, the agent's writer. Like kubelet's node lease it
replaces the Lease it last wrote (the resourceVersion is the precondition),
so a renewal is one request; a refused one reads again next time.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Final

from kubernetes import client

from rtdra.kube import API_FAILURES, StoreError, api_error, micro_time, read_object

#: ``rtdra-agent-<node>``: the Lease of a node's agent.
AGENT_LEASE_PREFIX: Final = "rtdra-agent-"
LEASE_API_VERSION: Final = "coordination.k8s.io/v1"


def agent_lease_name(node: str) -> str:
    return AGENT_LEASE_PREFIX + node


def lease_node(lease: Mapping[str, Any]) -> str | None:
    """The node whose agent holds ``lease`` (a raw Lease), or ``None`` if it is not an agent's Lease."""
    name = str((lease.get("metadata") or {}).get("name") or "")
    holder = (lease.get("spec") or {}).get("holderIdentity")
    if not name.startswith(AGENT_LEASE_PREFIX) or holder != name[len(AGENT_LEASE_PREFIX) :]:
        return None
    return holder if isinstance(holder, str) else None


def renew_time(lease: Mapping[str, Any]) -> str:
    """The Lease's ``spec.renewTime`` as written (a MicroTime), ``""`` if none."""
    return str((lease.get("spec") or {}).get("renewTime") or "")


class LeaseRenewer:
    """Renews one node agent's Lease (creating it when missing)."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        node: str,
        *,
        duration_s: float,
        request_timeout: float = 10.0,
    ) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.node = node
        self.name = agent_lease_name(node)
        self.duration_s = duration_s
        self.request_timeout = request_timeout
        self._last: dict[str, Any] | None = None

    def renew(self, now: dt.datetime | None = None) -> None:
        """Write ``renewTime = now``; raises :class:`StoreError` (the next renewal starts from a fresh read)."""
        stamp = micro_time(now or dt.datetime.now(dt.UTC))
        try:
            lease = self._last if self._last is not None else self._read()
            if lease is None:
                self._last = self._call(
                    "creating", self.coordination.create_namespaced_lease, self.namespace, self._new(stamp)
                )
                return
            spec = {**(lease.get("spec") or {}), **self._spec(stamp)}
            body = {**lease, "spec": spec}
            self._last = self._call(
                "renewing", self.coordination.replace_namespaced_lease, self.name, self.namespace, body
            )
        except StoreError:
            self._last = None
            raise

    def _read(self) -> dict[str, Any] | None:
        return read_object(self.coordination.read_namespaced_lease, self.namespace, self.name, self.request_timeout)

    def _spec(self, stamp: str) -> dict[str, Any]:
        return {"holderIdentity": self.node, "leaseDurationSeconds": max(1, round(self.duration_s)), "renewTime": stamp}

    def _new(self, stamp: str) -> dict[str, Any]:
        return {
            "apiVersion": LEASE_API_VERSION,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {**self._spec(stamp), "acquireTime": stamp},
        }

    def _call(self, what: str, method: Any, *args: Any) -> dict[str, Any]:
        try:
            response = method(*args, _preload_content=False, _request_timeout=self.request_timeout)
            data = response.data
        except API_FAILURES as err:
            raise api_error(err, f"{what} Lease {self.namespace}/{self.name}") from None
        lease: dict[str, Any] = json.loads(data)
        return lease
