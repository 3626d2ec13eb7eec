"""DRA mode: scoring nodes for pods whose ResourceClaims ask for RT CPUs (prioritize only).

In DRA mode kube-scheduler's own DRA plugin filters and allocates (it books
each claim's bandwidth on distinct CPU devices and enforces Σ consumed ≤
capacity per device), but it does not score nodes by spare capacity: it takes
the first node that fits. This optional role of the extender scores them as
the pod's placement says (``rtdra.placement.placement_policy``: ``pack`` the
node left fullest, ``spread`` the emptiest), from

- the ResourceSlices of driver ``rt.resource.example.com`` (each node's pool:
  Σ of its devices' bandwidth capacity), and
- the allocated ResourceClaims (``status.allocation.devices.results`` of our
  driver: Σ of the consumed bandwidth per pool, i.e. node),

both kept current by list-then-watch (``rtdra.listwatch``), so prioritize
makes no API call. The pod's demand is Σ count × capacity request of its
claims' requests of our class (the webhook wrote them).

kube-scheduler would call an extender entry without ``managedResources`` for
*every* pod it schedules (measured: about half the plain pods' throughput on
a 2-CPU machine), so the shipped entry manages ``rtdra.dra.SCORING_RESOURCE``,
which the webhook adds to pods with ResourceClaims: plain pods never get here.
A pod that does anyway - without ``spec.resourceClaims``, or whose claims are
not ours (or not seen yet) - gets the same score (0) on every node, which
changes no ranking.
:class:`DraUsage` is the pure bookkeeping; :class:`DraWatch` feeds it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kubernetes import client

from extender.wire import MIN_PRIORITY, HostPriority
from rtdra import dra
from rtdra.kube import read_object
from rtdra.listwatch import object_feed
from rtdra.placement import placement_policy
from rtdra.request import DEFAULT_PLACEMENT, InvalidRequest, Placement, parse_placement

log = logging.getLogger(__name__)

ClaimKey = tuple[str, str]
#: Only our driver's slices (ResourceSlices support this field selector); a pool is named after its node.
_SLICE_SELECTOR: Final = f"spec.driver={dra.DRIVER}"


def _bandwidth(value: Any) -> int:
    try:
        return dra.parse_quantity(value)
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class SliceInfo:
    """One ResourceSlice of our driver: its node, pool generation and Σ device capacity."""

    node: str
    generation: int
    capacity: int

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> SliceInfo | None:
        spec = obj.get("spec") or {}
        if spec.get("driver") != dra.DRIVER or not spec.get("nodeName"):
            return None
        pool = spec.get("pool") or {}
        total = 0
        for device in spec.get("devices") or []:
            capacity = (device.get("capacity") or {}).get(dra.CAPACITY) or {}
            total += _bandwidth(capacity.get("value"))
        return cls(str(spec["nodeName"]), int(pool.get("generation") or 0), total)


@dataclass(frozen=True, slots=True)
class ClaimInfo:
    """What a ResourceClaim means here: bandwidth it asks for and bandwidth it holds, per node."""

    #: Σ count × capacity request over the requests of our class (0: not an RT claim).
    demand: int
    #: Consumed bandwidth by pool (= node), from the allocation's results of our driver.
    consumed: Mapping[str, int]

    @property
    def ours(self) -> bool:
        return self.demand > 0 or bool(self.consumed)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ClaimInfo:
        spec = obj.get("spec") or {}
        demand = 0
        for request in (spec.get("devices") or {}).get("requests") or []:
            exactly = request.get("exactly") or {}
            if exactly.get("deviceClassName") != dra.DEVICE_CLASS:
                continue
            requested = (exactly.get("capacity") or {}).get("requests") or {}
            demand += int(exactly.get("count") or 1) * _bandwidth(requested.get(dra.CAPACITY, 0))
        consumed: dict[str, int] = {}
        allocation = (obj.get("status") or {}).get("allocation") or {}
        for result in (allocation.get("devices") or {}).get("results") or []:
            if result.get("driver") != dra.DRIVER:
                continue
            used = _bandwidth((result.get("consumedCapacity") or {}).get(dra.CAPACITY, 0))
            pool = str(result.get("pool") or "")
            consumed[pool] = consumed.get(pool, 0) + used
        return cls(demand, consumed)


def _claim_key(obj: Mapping[str, Any]) -> ClaimKey:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _slice_name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


#: ``(namespace, name) -> ResourceClaim`` from the API (``None``: no such claim); raises on failure.
ClaimReader = Callable[[str, str], Mapping[str, Any] | None]


class DraUsage:
    """Per node: bandwidth capacity (ResourceSlices) and bandwidth consumed (allocated claims). Thread-safe.

    ``reader`` reads a claim the watch has not brought yet: the resourceclaim controller creates a
    pod's claim moments before kube-scheduler (watching the same API server) may ask about the pod,
    and under load our watch can be behind its. A claim's spec is immutable, so what is read is
    right; it is not stored (the watch brings it).
    """

    def __init__(self, reader: ClaimReader | None = None) -> None:
        self.reader = reader
        self._lock = threading.Lock()
        self._slices: dict[str, SliceInfo] = {}
        self._claims: dict[ClaimKey, ClaimInfo] = {}
        self._capacity: dict[str, int] = {}
        self._used: dict[str, int] = {}

    # -- slices --------------------------------------------------------------------

    def _recompute_capacity(self) -> None:
        newest: dict[str, int] = {}
        for info in self._slices.values():
            newest[info.node] = max(newest.get(info.node, info.generation), info.generation)
        capacity: dict[str, int] = {}
        for info in self._slices.values():
            if info.generation == newest[info.node]:  # a pool being republished: only its newest slices count
                capacity[info.node] = capacity.get(info.node, 0) + info.capacity
        self._capacity = capacity

    def replace_slices(self, items: Sequence[Mapping[str, Any]]) -> None:
        slices = {_slice_name(obj): info for obj in items if (info := SliceInfo.of(obj)) is not None}
        with self._lock:
            self._slices = slices
            self._recompute_capacity()

    def apply_slice(self, event_type: str, obj: Mapping[str, Any]) -> None:
        name = _slice_name(obj)
        info = None if event_type == "DELETED" else SliceInfo.of(obj)
        with self._lock:
            if info is None:
                self._slices.pop(name, None)
            else:
                self._slices[name] = info
            self._recompute_capacity()

    # -- claims --------------------------------------------------------------------

    def _account(self, info: ClaimInfo | None, sign: int) -> None:
        if info is None:
            return
        for node, used in info.consumed.items():
            total = self._used.get(node, 0) + sign * used
            if total:
                self._used[node] = total
            else:
                self._used.pop(node, None)

    def replace_claims(self, items: Sequence[Mapping[str, Any]]) -> None:
        claims = {_claim_key(obj): info for obj in items if (info := ClaimInfo.of(obj)).ours}
        with self._lock:
            self._claims, self._used = {}, {}
            for key, info in claims.items():
                self._claims[key] = info
                self._account(info, 1)

    def apply_claim(self, event_type: str, obj: Mapping[str, Any]) -> None:
        key = _claim_key(obj)
        info = None if event_type == "DELETED" else ClaimInfo.of(obj)
        with self._lock:
            self._account(self._claims.pop(key, None), -1)
            if info is not None and info.ours:
                self._claims[key] = info
                self._account(info, 1)

    # -- reading ---------------------------------------------------------------------

    def node(self, node: str) -> tuple[int, int]:
        """``(used, capacity)`` of a node's RT CPUs (capacity 0: no slice of ours)."""
        return self._used.get(node, 0), self._capacity.get(node, 0)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """``{node: {"used": ..., "capacity": ...}}`` for every node with a slice or an allocation."""
        with self._lock:
            nodes = sorted(set(self._capacity) | set(self._used))
            return {n: {"used": self._used.get(n, 0), "capacity": self._capacity.get(n, 0)} for n in nodes}

    def claim_demand(self, namespace: str, name: str) -> int:
        """The bandwidth an unallocated claim asks for (0: not ours, allocated, or not to be had)."""
        info = self._claims.get((namespace, name))
        if info is None and self.reader is not None:
            try:
                obj = self.reader(namespace, name)
            except Exception as err:  # scoring is best effort: no opinion rather than an error
                log.warning("cannot read ResourceClaim %s/%s: %s", namespace, name, err)
                obj = None
            info = ClaimInfo.of(obj) if obj is not None else None
        if info is None or info.consumed:
            return 0
        return info.demand

    def pod_demand(self, pod: Mapping[str, Any]) -> int:
        """Σ of the pod's unallocated RT claims' demand (0: nothing for us to score)."""
        spec = pod.get("spec") or {}
        references = spec.get("resourceClaims")
        if not references:
            return 0
        metadata = pod.get("metadata") or {}
        namespace = str(metadata.get("namespace") or "default")
        generated = {
            str(s.get("name")): s.get("resourceClaimName")
            for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
        }
        total = 0
        for reference in references:
            name = reference.get("resourceClaimName") or generated.get(str(reference.get("name")))
            if name:
                total += self.claim_demand(namespace, str(name))
        return total


def neutral(nodes: Sequence[str]) -> list[HostPriority]:
    """The same score everywhere: no opinion."""
    return [{"Host": node, "Score": MIN_PRIORITY} for node in nodes]


def prioritize_dra(
    pod: Mapping[str, Any], nodes: Sequence[str], usage: DraUsage, default_placement: Placement = DEFAULT_PLACEMENT
) -> list[HostPriority]:
    """0..10 per node by the pod's placement policy over the nodes' RT bandwidth; neutral for other pods."""
    if not (pod.get("spec") or {}).get("resourceClaims"):
        return neutral(nodes)  # the plain pod's path: no lookup at all
    demand = usage.pod_demand(pod)
    if not demand:
        return neutral(nodes)
    try:
        placement = parse_placement((pod.get("metadata") or {}).get("annotations") or {}, default_placement)
    except InvalidRequest:
        placement = default_placement
    loads = [load if load[1] else None for load in map(usage.node, nodes)]
    scores = placement_policy(placement).scores(loads, demand)
    return [{"Host": n, "Score": s} for n, s in zip(nodes, scores, strict=True)]


class DraWatch:
    """Keeps a :class:`DraUsage` current: our driver's ResourceSlices and every ResourceClaim."""

    def __init__(self, api: client.ApiClient, *, request_timeout: float = 5.0, watch_timeout_seconds: int = 300):
        self.usage = DraUsage(self.read_claim)
        self._resource = client.ResourceV1Api(api)
        self.request_timeout = request_timeout
        self.slices = object_feed(
            "dra-slice-watch",
            self._resource.list_resource_slice,
            field_selector=_SLICE_SELECTOR,
            on_list=self.usage.replace_slices,
            on_event=lambda e: self.usage.apply_slice(e.type, e.object),
            request_timeout=request_timeout,
            timeout_seconds=watch_timeout_seconds,
        )
        self.claims = object_feed(
            "dra-claim-watch",
            self._resource.list_resource_claim_for_all_namespaces,
            on_list=self.usage.replace_claims,
            on_event=lambda e: self.usage.apply_claim(e.type, e.object),
            request_timeout=request_timeout,
            timeout_seconds=watch_timeout_seconds,
        )

    @property
    def synced(self) -> bool:
        return self.slices.synced.is_set() and self.claims.synced.is_set()

    def start(self) -> DraWatch:
        self.slices.start()
        self.claims.start()
        return self

    def stop(self) -> None:
        self.slices.stop()
        self.claims.stop()

    def read_claim(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """One claim from the API (``None`` if there is none)."""
        return read_object(self._resource.read_namespaced_resource_claim, namespace, name, self.request_timeout)
