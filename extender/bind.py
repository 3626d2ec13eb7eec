"""Bind: reserve the pod's CPUs in the node's ledger, then bind the pod - crash-safe and idempotent.

The sequence, for pod P (UID u) and node N:

1. Know P: the pending pod the worker's pod watch holds under u (no API
   call), else read it. Read and bound to N already: make sure the
   reservation exists and answer success (a retried bind). Bound elsewhere,
   or UID not the scheduler's: an error.
2. Reserve in N's NodeAllocationState by compare-and-swap
   (``rtdra.store.NasStore.update``): on the freshest ledger, keep u's
   reservation if it holds one, else choose CPUs with
   ``rtdra.placement.place_pod`` (best-fit for ``pack``, worst-fit for
   ``spread``) and ``NodeLedger.reserve`` them. A 409
   re-reads and decides again, so concurrent binds - other workers, replicas -
   can never overcommit a CPU. Within one process, binds to the same node
   that arrive while a write to it is in flight are written together, in one
   compare-and-swap (``extender.writes``), instead of fighting over the
   resourceVersion.
3. Create the ``pods/binding`` with P's UID *and resourceVersion* as
   preconditions, carrying the ``rt.resource.example.com/allocation``
   annotation (``rtdra.ledger.allocation_annotation``: the node and, per
   container, its CPUs and ``runtimeNs``/``deadlineNs``/``periodNs``), which the API server merges into P in the
   same write - so the request the reservation was decided on is the pod's
   request at the moment it is bound, and the annotation never exists
   without the binding. The NAS stays the source of truth.
4. If the Binding is refused, re-read P: bound to N (a concurrent or earlier
   bind of the same pod) is success; unchanged but at a newer
   resourceVersion (the watch lagged, or someone touched an annotation), with
   the same request, bind once more; anything else releases u's reservation on
   N (compare-and-swap again) and is an error.

A crash between 2 and 3 leaves a reservation for an unbound pod; the
reconcile loop (``extender.reconcile``) releases it after a grace period.
Pods without a real-time request are bound without touching any ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes import client

from extender.cache import LedgerCache
from extender.metrics import Metrics
from extender.writes import NodeWrites
from rtdra import names
from rtdra.kube import API_FAILURES, failure_text, read_pod
from rtdra.ledger import (
    LedgerError,
    NodeLedger,
    PodAllocation,
    allocation_annotation,
    release_if_held,
    released_reservation,
)
from rtdra.placement import NoFit, place_pod, pod_bandwidth
from rtdra.request import ClaimParametersLookup, InvalidRequest, Placement, PodRequest, read_pod_request
from rtdra.store import NasStore, NotFound, StoreError

log = logging.getLogger(__name__)


class BindError(RuntimeError):
    """The pod cannot be bound to the node; the message goes back to kube-scheduler."""


@dataclass(frozen=True, slots=True)
class BindOutcome:
    """What a successful bind did."""

    reserved: PodAllocation | None
    #: The pod was bound to the node before this call (a retry).
    already_bound: bool = False


def _was_released(pod: Mapping[str, Any], node: str, allocation: PodAllocation) -> bool:
    """Whether the pod's ``released`` annotation names ``allocation`` on ``node`` (see ``extender.reconcile``)."""
    return released_reservation(pod) == (node, allocation.reserved_at)


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: ``uid -> the pending pod`` as a watch last saw it (``None``: not known; read it from the API).
PodLookup = Callable[[str], Mapping[str, Any] | None]


class Binder:
    """Binds pods through the API: reservation (CAS), Binding with the annotation, rollback."""

    def __init__(
        self,
        api: client.ApiClient,
        store: NasStore,
        *,
        cache: LedgerCache | None = None,
        metrics: Metrics | None = None,
        default_placement: Placement = "pack",
        request_timeout: float = 10.0,
        pods: PodLookup | None = None,
        claim_parameters: ClaimParametersLookup | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.store = store
        self.cache = cache
        self.metrics = metrics
        self.default_placement = default_placement
        self.request_timeout = request_timeout
        self.pods = pods
        self.claim_parameters = claim_parameters
        self.writes = NodeWrites(store, metrics=metrics, on_stored=cache.put if cache is not None else None)

    # -- the verb ------------------------------------------------------------

    def bind(self, namespace: str, name: str, uid: str, node: str) -> BindOutcome:
        pod = self._known_pod(namespace, name, uid)
        if pod is None:
            pod = self._read_pod(namespace, name)
            actual_uid = str((pod.get("metadata") or {}).get("uid", ""))
            if uid and actual_uid != uid:
                raise BindError(f"pod {namespace}/{name} has UID {actual_uid}, not {uid} (it was recreated)")
            uid = actual_uid
            bound_to = (pod.get("spec") or {}).get("nodeName") or ""
            if bound_to and bound_to != node:
                raise BindError(f"pod {namespace}/{name} is already bound to node {bound_to}, not {node}")
            request = self._request(pod, namespace, name)
            if bound_to == node:
                return self._already_bound(node, request, uid, namespace, name)
        else:
            request = self._request(pod, namespace, name)
        allocation = None
        if request is not None:
            allocation = self._reserve(node, request, uid, namespace, name)
            if _was_released(pod, node, allocation):  # kept from a stalled bind the reconciler is releasing
                self.rollback(node, uid, allocation)
                raise BindError(
                    f"pod {namespace}/{name}: its reservation on {node} from {allocation.reserved_at} is being "
                    "released (its bind stalled past the grace period); try again"
                )
        version = str((pod.get("metadata") or {}).get("resourceVersion") or "")
        annotation = allocation_annotation(allocation, node) if allocation is not None else None
        try:
            self._create_binding(namespace, name, uid, version, node, annotation)
        except API_FAILURES as err:
            return self._after_failed_binding(
                namespace, name, uid, node, request, allocation, annotation, failure_text(err)
            )
        return BindOutcome(allocation)

    # -- steps -----------------------------------------------------------------

    def _known_pod(self, namespace: str, name: str, uid: str) -> Mapping[str, Any] | None:
        """The pending pod as the pod watch has it, if it is the one asked about."""
        if self.pods is None or not uid:
            return None
        pod = self.pods(uid)
        if pod is None:
            return None
        metadata = pod.get("metadata") or {}
        if metadata.get("namespace") != namespace or metadata.get("name") != name:
            return None
        return pod

    def _request(self, pod: Mapping[str, Any], namespace: str, name: str) -> PodRequest | None:
        try:
            return read_pod_request(pod, self.claim_parameters, default_placement=self.default_placement)
        except InvalidRequest as err:
            raise BindError(f"pod {namespace}/{name}: invalid real-time request: {err}") from None

    def _already_bound(self, node: str, request: PodRequest | None, uid: str, namespace: str, name: str) -> BindOutcome:
        """A retried bind: success, reserving only if the pod holds nothing here yet.

        The Binding exists, so an error would only make kube-scheduler retry
        forever; a pod bound without room is left to the node agent, which
        refuses to start it without a reservation.
        """
        if request is None:
            return BindOutcome(None, already_bound=True)
        try:
            return BindOutcome(self._reserve(node, request, uid, namespace, name), already_bound=True)
        except BindError as err:
            log.warning("pod %s/%s is bound to %s without a reservation: %s", namespace, name, node, err)
            return BindOutcome(None, already_bound=True)

    def _read_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            pod = read_pod(self.core, namespace, name, self.request_timeout)
        except StoreError as err:
            raise BindError(str(err)) from None
        if pod is None:
            raise BindError(f"pod {namespace}/{name} does not exist")
        return pod

    def _reserve(self, node: str, request: PodRequest, uid: str, namespace: str, name: str) -> PodAllocation:
        reserved_at = now_rfc3339()

        def change(ledger: NodeLedger) -> NodeLedger:
            if uid in ledger.pods:
                return ledger  # a retry: keep what was reserved, reserve nothing twice
            fit = place_pod(ledger, request)
            if isinstance(fit, NoFit):
                raise BindError(f"node {node}: {fit.reason}")
            return ledger.reserve(fit.allocation(request, uid, namespace, name, reserved_at))

        if self.cache is not None:
            self.cache.assume(node, uid, pod_bandwidth(request))  # the filter counts it until written
        stored: NodeLedger | None = None
        try:
            stored = self.writes.apply(node, change)
        except NotFound:
            raise BindError(f"node {node} has no NodeAllocationState (is the rt-dra agent running there?)") from None
        except LedgerError as err:
            raise BindError(str(err)) from None
        except StoreError as err:
            raise BindError(f"node {node}: could not reserve: {err}") from None
        finally:
            if self.cache is not None:
                self.cache.forget(node, uid, stored=stored is not None)
        allocation = stored.pods[uid]
        if allocation.containers.keys() != request.containers.keys():
            raise BindError(
                f"pod {namespace}/{name} holds a different reservation on {node}; it must be released first"
            )
        return allocation

    def _create_binding(
        self, namespace: str, name: str, uid: str, resource_version: str, node: str, annotation: str | None
    ) -> None:
        metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        if annotation is not None:
            # pods/binding merges the Binding's annotations into the pod in the same write.
            metadata["annotations"] = {names.ALLOCATION: annotation}
        body: Any = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": metadata,
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        # The reply is a Status, which the generated client cannot read as a V1Binding.
        response: Any = self.core.create_namespaced_pod_binding(
            name, namespace, body, _preload_content=False, _request_timeout=self.request_timeout
        )
        # Read it to the end, or its connection never goes back to the pool: every bind
        # would then open (and the API server accept) a new TLS connection.
        response.drain_conn()
        response.release_conn()

    def _after_failed_binding(
        self,
        namespace: str,
        name: str,
        uid: str,
        node: str,
        request: PodRequest | None,
        allocation: PodAllocation | None,
        annotation: str | None,
        what: str,
    ) -> BindOutcome:
        for attempt in range(2):
            try:
                pod = self._read_pod(namespace, name)
            except BindError as read_error:
                what = f"{what}; {read_error}"
                break
            actual_uid = str((pod.get("metadata") or {}).get("uid", ""))
            if actual_uid != uid:
                what = f"pod {namespace}/{name} has UID {actual_uid}, not {uid} (it was recreated)"
                break
            bound_to = (pod.get("spec") or {}).get("nodeName") or ""
            if bound_to == node:
                return BindOutcome(allocation, already_bound=True)  # a concurrent or earlier bind of it won
            if bound_to:
                what = f"pod {namespace}/{name} is already bound to node {bound_to}, not {node}"
                break
            if attempt or (pod.get("metadata") or {}).get("deletionTimestamp"):
                break
            if allocation is not None and _was_released(pod, node, allocation):
                # The reconciler fenced the pod and released this reservation: binding again would bind
                # the pod to CPUs the ledger no longer holds for it.
                what = f"its reservation on {node} from {allocation.reserved_at} was released meanwhile"
                break
            retried = self._bind_again(pod, namespace, name, uid, node, request, annotation)
            if retried is None:
                return BindOutcome(allocation)
            what = retried
        if allocation is not None:
            self.rollback(node, uid, allocation)
        raise BindError(f"binding pod {namespace}/{name} to {node} failed: {what}")

    def _bind_again(
        self,
        pod: Mapping[str, Any],
        namespace: str,
        name: str,
        uid: str,
        node: str,
        request: PodRequest | None,
        annotation: str | None,
    ) -> str | None:
        """The pod is still unbound at a newer resourceVersion: bind once more if it asks the same.

        Returns ``None`` when bound, else why not.
        """
        try:
            fresh = read_pod_request(pod, self.claim_parameters, default_placement=self.default_placement)
        except InvalidRequest as err:
            return f"its real-time request is invalid now: {err}"
        if fresh != request:
            return "its real-time request changed while it was being bound"
        version = str((pod.get("metadata") or {}).get("resourceVersion") or "")
        try:
            self._create_binding(namespace, name, uid, version, node, annotation)
        except API_FAILURES as err:
            return failure_text(err)
        return None

    def rollback(self, node: str, uid: str, allocation: PodAllocation) -> None:
        """Release ``uid``'s reservation on ``node`` if it is still ``allocation`` (best effort: the reconciler
        retries later) - never a reservation another bind of the same pod made since."""
        try:
            self.writes.apply(node, partial(release_if_held, allocations={uid: allocation.reserved_at}))
        except StoreError as err:
            log.warning("rollback of pod %s on %s failed (the reconciler will release it): %s", uid, node, err)
        else:
            if self.metrics is not None:
                self.metrics.bind_rollbacks.inc()
