"""Which node agents are alive: the extender's watch-fed view of the agents' Leases (``rtdra.leases``).

A node's NodeAllocationState stays ``Ready`` when its agent is SIGKILLed, so
the filter also asks this view: a node whose agent's Lease is missing, or
whose ``renewTime`` has not changed for ``bound_s`` seconds, is not ready for
real-time pods, and the filter says so.

Silence is measured on this process's monotonic clock, from when it saw the
``renewTime`` change - as kube-controller-manager's node lifecycle controller
does with kubelet's Lease - so clock skew between the nodes and the extender
does not matter. The price: right after the extender starts, a node whose
agent died earlier is trusted for one more bound.

The feed is the project's one list-then-watch (``rtdra.listwatch``) on the
Leases of the driver namespace; Leases that are not an agent's are ignored.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes import client

from rtdra.leases import agent_lease_name, lease_node, renew_time
from rtdra.listwatch import object_feed


class AgentHeartbeats:
    """Node -> when this process last saw its agent renew its Lease."""

    def __init__(
        self,
        namespace: str,
        bound_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.bound_s = bound_s
        self.clock = clock
        #: Called when a silent (or unknown) node's agent is heard again: the filter may now pass it.
        self.on_room = on_room
        #: node -> (the renewTime seen, when it was first seen by :attr:`clock`)
        self._seen: dict[str, tuple[str, float]] = {}
        #: The nodes whose agent was alive when :meth:`alive_nodes` last looked, kept as renewals come in ...
        self._alive: set[str] = set()
        #: ... and ``(when silence starts, node)`` for each renewal, so that looking again only drops the
        #: nodes whose time ran out since (a node renewed meanwhile has a later entry and stays).
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._synced = threading.Event()

    @property
    def synced(self) -> bool:
        """Whether the view has seen a complete list at least once."""
        return self._synced.is_set()

    def silence(self, node: str, now: float | None = None) -> str | None:
        """Why ``node``'s agent counts as gone (``None``: it renewed its Lease within the bound)."""
        seen = self._seen.get(node)
        if seen is None:
            lease = f"{self.namespace}/{agent_lease_name(node)}"
            return f"node {node} is not ready for real-time pods (its rt-dra agent has no Lease {lease})"
        if (self.clock() if now is None else now) - seen[1] > self.bound_s:
            lease = f"{self.namespace}/{agent_lease_name(node)}"
            return (
                f"node {node} is not ready for real-time pods "
                f"(its rt-dra agent has not renewed its Lease {lease} for more than {self.bound_s:g}s)"
            )
        return None

    def alive_nodes(self, now: float) -> set[str]:
        """The nodes whose :meth:`silence` is ``None`` at ``now``, for the filter's lookups.

        Kept current as Leases come and go: looking costs nothing unless some
        node's bound ran out since, and then only that node is looked at. The
        set is this view's own (read it, do not keep it): a renewal may add to
        it while a filter reads.
        """
        with self._lock:
            self._expire(now)
            return self._alive

    def _expire(self, now: float) -> None:
        """Drop the nodes whose bound ran out by ``now`` from the alive set (under the lock)."""
        expiries, seen, bound, alive = self._expiries, self._seen, self.bound_s, self._alive
        while expiries and expiries[0][0] < now:
            _, node = heapq.heappop(expiries)
            heard = seen.get(node)
            if heard is None or now - heard[1] > bound:
                alive.discard(node)

    # -- what the feed brings --------------------------------------------------------------

    def replace_all(self, leases: Sequence[Mapping[str, Any]]) -> None:
        held, now = self._seen, self.clock()
        seen: dict[str, tuple[str, float]] = {}
        for lease in leases:
            node = lease_node(lease)
            if node is not None:
                seen[node] = _observed(held.get(node), renew_time(lease), now)
        expiries = [(heard + self.bound_s, node) for node, (_, heard) in seen.items()]
        heapq.heapify(expiries)
        with self._lock:
            self._seen = seen
            self._alive = set(seen)  # alive_nodes drops those whose bound has run out
            self._expiries = expiries
        self._synced.set()

    def apply(self, kind: str, lease: Mapping[str, Any]) -> None:
        node = lease_node(lease)
        if node is None:
            return
        if kind == "DELETED":
            with self._lock:
                self._seen.pop(node, None)
                self._alive.discard(node)
            return
        now = self.clock()
        silent = self.silence(node, now) is not None
        with self._lock:
            held = self._seen.get(node)
            observed = self._seen[node] = _observed(held, renew_time(lease), now)
            if observed is not held:
                self._alive.add(node)
                heapq.heappush(self._expiries, (observed[1] + self.bound_s, node))
            self._expire(now)  # keeps the heap as short as the renewals within one bound
        if silent and self.on_room is not None and self.silence(node, now) is None:
            self.on_room()


def _observed(held: tuple[str, float] | None, renewed: str, now: float) -> tuple[str, float]:
    if held is not None and held[0] == renewed:
        return held  # not renewed since: silence keeps counting
    return renewed, now


class WatchedAgentHeartbeats(AgentHeartbeats):
    """:class:`AgentHeartbeats` kept current by list-then-watch on the driver namespace's Leases."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        bound_s: float,
        *,
        watch_timeout_seconds: int = 300,
        request_timeout: float = 30.0,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(namespace, bound_s, on_room=on_room)
        self.coordination = client.CoordinationV1Api(api)
        self.feed = object_feed(
            "lease-watch",
            self.coordination.list_namespaced_lease,
            self.namespace,
            on_list=self.replace_all,
            on_event=lambda event: self.apply(event.type, event.object),
            request_timeout=request_timeout,
            timeout_seconds=watch_timeout_seconds,
        )

    def start(self) -> WatchedAgentHeartbeats:
        self.feed.start()
        return self

    def stop(self) -> None:
        self.feed.stop()
