"""Bind: reserve the pod's CPUs in the node's ledger, then bind the pod - crash-safe and idempotent.

The sequence, for pod P (UID u) and node N:

1. Read P from the API. Bound to N already: make sure the reservation exists
   and answer success (a retried bind). Bound elsewhere: an error. UID not the
   scheduler's: an error (the pod was recreated).
2. Reserve in N's NodeAllocationState by compare-and-swap
   (``rtdra.store.NasStore.update``): on the freshest ledger, keep u's
   reservation if it holds one, else choose CPUs with
   ``rtdra.placement.place_pod`` and ``NodeLedger.reserve`` them. A 409
   re-reads and decides again, so concurrent binds - other threads, workers,
   replicas - can never overcommit a CPU.
3. Annotate P with ``rt.resource.example.com/allocation`` (JSON: the node and,
   per container, its CPUs and runtime/deadline/period in ns) so the node side
   sees what was chosen; the NAS stays the source of truth.
4. Create the ``pods/binding`` (with P's UID as precondition).
5. If 3 or 4 fails, and P did not end up bound to N after all, release u's
   reservation on N (compare-and-swap again).

A crash between 2 and 4 leaves a reservation for an unbound pod; the
reconcile loop (``extender.reconcile``) releases it after a grace period.
Pods without a real-time request are bound without touching any ledger.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from extender.cache import LedgerCache
from extender.metrics import Metrics
from rtdra import names
from rtdra.ledger import LedgerError, NodeLedger, PodAllocation
from rtdra.placement import NoFit, place_pod
from rtdra.request import InvalidRequest, Placement, PodRequest, read_pod_request
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


def allocation_annotation(allocation: PodAllocation, node: str) -> str:
    """The ``rt.resource.example.com/allocation`` value for ``allocation`` on ``node``."""
    containers = {
        name: {
            "cpus": [s.cpu for s in slots],
            "runtime": slots[0].runtime_ns,
            "deadline": slots[0].deadline_ns,
            "period": slots[0].period_ns,
        }
        for name, slots in sorted(allocation.containers.items())
        if slots
    }
    return json.dumps({"node": node, "containers": containers}, sort_keys=True, separators=(",", ":"))


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Binder:
    """Binds pods through the API: reservation (CAS), annotation, Binding, rollback."""

    def __init__(
        self,
        api: client.ApiClient,
        store: NasStore,
        *,
        cache: LedgerCache | None = None,
        metrics: Metrics | None = None,
        default_placement: Placement = "pack",
        request_timeout: float = 10.0,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.store = store
        self.cache = cache
        self.metrics = metrics
        self.default_placement = default_placement
        self.request_timeout = request_timeout

    # -- the verb ------------------------------------------------------------

    def bind(self, namespace: str, name: str, uid: str, node: str) -> BindOutcome:
        pod = self._read_pod(namespace, name)
        actual_uid = str((pod.get("metadata") or {}).get("uid", ""))
        if uid and actual_uid != uid:
            raise BindError(f"pod {namespace}/{name} has UID {actual_uid}, not {uid} (it was recreated)")
        uid = actual_uid
        bound_to = (pod.get("spec") or {}).get("nodeName") or ""
        if bound_to and bound_to != node:
            raise BindError(f"pod {namespace}/{name} is already bound to node {bound_to}, not {node}")
        try:
            request = read_pod_request(pod, None, default_placement=self.default_placement)
        except InvalidRequest as err:
            raise BindError(f"pod {namespace}/{name}: invalid real-time request: {err}") from None

        if bound_to == node:
            return self._already_bound(node, request, uid, namespace, name)
        allocation = None
        if request is not None:
            allocation = self._reserve(node, request, uid, namespace, name)
        try:
            if allocation is not None:
                self._annotate(namespace, name, allocation_annotation(allocation, node))
            self._create_binding(namespace, name, uid, node)
        except (ApiException, OSError) as err:
            return self._after_failed_binding(namespace, name, uid, node, allocation, err)
        return BindOutcome(allocation)

    # -- steps -----------------------------------------------------------------

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
            response: Any = self.core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self.request_timeout
            )
        except ApiException as err:
            if err.status == 404:
                raise BindError(f"pod {namespace}/{name} does not exist") from None
            raise BindError(f"reading pod {namespace}/{name}: {err.status} {err.reason}") from None
        pod: dict[str, Any] = json.loads(response.data)
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

        try:
            stored = self._update(node, change)
        except NotFound:
            raise BindError(f"node {node} has no NodeAllocationState (is the rt-dra agent running there?)") from None
        except LedgerError as err:
            raise BindError(str(err)) from None
        except StoreError as err:
            raise BindError(f"node {node}: could not reserve: {err}") from None
        allocation = stored.pods[uid]
        if allocation.containers.keys() != request.containers.keys():
            raise BindError(
                f"pod {namespace}/{name} holds a different reservation on {node}; it must be released first"
            )
        return allocation

    def _update(self, node: str, change: Callable[[NodeLedger], NodeLedger]) -> NodeLedger:
        attempts = 0

        def counted(ledger: NodeLedger) -> NodeLedger:
            nonlocal attempts
            attempts += 1
            return change(ledger)

        try:
            stored = self.store.update(node, counted)
        finally:
            if self.metrics is not None and attempts > 1:
                self.metrics.bind_conflicts.inc(attempts - 1)
        if self.cache is not None:
            self.cache.put(stored)
        return stored

    def _annotate(self, namespace: str, name: str, value: str) -> None:
        self.core.patch_namespaced_pod(
            name,
            namespace,
            {"metadata": {"annotations": {names.ALLOCATION: value}}},
            _request_timeout=self.request_timeout,
        )

    def _create_binding(self, namespace: str, name: str, uid: str, node: str) -> None:
        body: Any = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        # The reply is a Status, which the generated client cannot read as a V1Binding.
        self.core.create_namespaced_pod_binding(
            name, namespace, body, _preload_content=False, _request_timeout=self.request_timeout
        )

    def _after_failed_binding(
        self, namespace: str, name: str, uid: str, node: str, allocation: PodAllocation | None, err: Exception
    ) -> BindOutcome:
        what = f"{err.status} {err.reason}" if isinstance(err, ApiException) else str(err)
        try:
            pod = self._read_pod(namespace, name)
            pod_uid = (pod.get("metadata") or {}).get("uid")
            if pod_uid == uid and (pod.get("spec") or {}).get("nodeName") == node:
                return BindOutcome(allocation, already_bound=True)  # a concurrent bind of the same pod won
        except BindError:
            pass
        if allocation is not None:
            self.rollback(node, uid)
        raise BindError(f"binding pod {namespace}/{name} to {node} failed: {what}")

    def rollback(self, node: str, uid: str) -> None:
        """Release ``uid``'s reservation on ``node`` (best effort: the reconciler retries later)."""
        try:
            self._update(node, lambda ledger: ledger.release(uid))
        except (StoreError, OSError) as err:
            log.warning("rollback of pod %s on %s failed (the reconciler will release it): %s", uid, node, err)
        else:
            if self.metrics is not None:
                self.metrics.bind_rollbacks.inc()
