"""The reconcile loop: release reservations no pod will use.

A reservation in a NodeAllocationState is kept while its pod (by UID - a
recreated pod with the same name has a new UID) exists, is not finished, and
is bound to that node or still within the bind grace period after
``reservedAt``. It is released when the pod

- is gone (deleted, or replaced by a pod with another UID),
- has finished (phase ``Succeeded`` or ``Failed``),
- is bound to another node, or
- is still unbound ``grace_seconds`` after the reservation (a bind that
  crashed between reserving and creating the Binding). The pod is first
  marked (``rt.resource.example.com/released``, conditional on the version
  read showing it unbound), so a bind that merely stalled there cannot
  complete later on CPUs the ledger gave away (see :meth:`Reconciler._fence`).

Every release is conditional on the reservation being the one decided on
(its ``reservedAt``): a reservation the same pod got since stays.

"Gone" is confirmed with a direct read of the pod after the reservation was
seen, so a pod created after the pod list was taken is never mistaken for a
deleted one. The periodic pass lists every pod only every ``full_every``-th
round (and whenever the pod watch's index of real-time pods may be incomplete,
:meth:`extender.pods.PodWatch.complete`); in between it checks the
reservations against that index and reads a pod directly before releasing its
reservation, so the index can delay a release but never cause a wrong one.
(Listing every pod every 30 s was 8 % of the extender's CPU in a scheduling
benchmark of 3,000 pods, and a full pod list for the API server each round
per worker and replica.) Besides the periodic pass, the extender's pod watch
(``extender.pods``, which bind uses too) makes it release a reservation as
soon as its pod (found through its ``rt.resource.example.com/allocation``
annotation) is deleted or finishes; after any release the ledger as stored
goes to the filter's cache, whose new room sends the pending real-time pods
back to kube-scheduler (``extender.requeue``). Releasing goes through the same compare-and-swap as
reserving and
is idempotent, so several workers or replicas may reconcile at once; the grace
period must stay well above kube-scheduler's extender ``httpTimeout`` (5 s by
default) so that a bind still in flight is never undercut.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from kubernetes import client

from extender.metrics import Metrics
from extender.pods import FINISHED_PHASES, PodState, PodWatch
from rtdra import names
from rtdra.kube import API_FAILURES, NotFound, api_error, read_pod
from rtdra.ledger import NodeLedger, PodAllocation, release_if_held, released_annotation
from rtdra.listwatch import list_objects
from rtdra.store import NasStore, StoreError

log = logging.getLogger(__name__)


def _parse_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def stale_reason(
    allocation: PodAllocation, node: str, pod: PodState | None, now: dt.datetime, grace_seconds: float
) -> str | None:
    """Why ``allocation`` on ``node`` should be released (``None``: keep it). ``pod`` is ``None`` when gone."""
    if pod is None or pod.uid != allocation.uid:
        return "pod_gone"
    if pod.phase in FINISHED_PHASES:
        return "pod_finished"
    if pod.node and pod.node != node:
        return "bound_elsewhere"
    if not pod.node:
        reserved = _parse_time(allocation.reserved_at)
        if reserved is None or (now - reserved).total_seconds() > grace_seconds:
            return "never_bound"
    return None


class Reconciler:
    """Runs :meth:`reconcile_once` every ``interval_seconds`` in a daemon thread."""

    def __init__(
        self,
        api: client.ApiClient,
        store: NasStore,
        *,
        grace_seconds: float = 60.0,
        interval_seconds: float = 30.0,
        metrics: Metrics | None = None,
        request_timeout: float = 30.0,
        pods: PodWatch | None = None,
        watch_timeout_seconds: int = 300,
        on_stored: Callable[[NodeLedger], None] | None = None,
        full_every: int = 10,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.store = store
        self.grace_seconds = grace_seconds
        self.interval_seconds = interval_seconds
        self.metrics = metrics
        self.request_timeout = request_timeout
        #: The pod watch this reconciler listens to (its own, made by :meth:`start`, if none is given).
        self.pods = pods
        self.watch_timeout_seconds = watch_timeout_seconds
        #: Called with every ledger a release stored (the extender's ledger cache), before pods are requeued.
        self.on_stored = on_stored
        #: Every how many periodic passes all pods are listed (the others use the pod watch's index).
        self.full_every = max(1, full_every)
        self._passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._own_pods: PodWatch | None = None

    def start(self, *, watch_pods: bool = True) -> Reconciler:
        """Run the periodic pass, and (``watch_pods``) release promptly on pod deletion or completion."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
            self._thread.start()
            if watch_pods:
                if self.pods is None:
                    self.pods = self._own_pods = PodWatch(
                        self.api, watch_timeout_seconds=self.watch_timeout_seconds, request_timeout=self.request_timeout
                    )
                self.pods.subscribe(self._on_pod)
                if self._own_pods is not None:
                    self._own_pods.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._own_pods is not None:
            self._own_pods.stop()

    def _run(self) -> None:
        # Jitter keeps several workers/replicas from reconciling in lockstep.
        while not self._stop.wait(self.interval_seconds * random.uniform(0.75, 1.25)):
            try:
                self.reconcile_once()
            except StoreError as err:  # expected: the API away or refusing; one line, not a traceback
                log.warning("reconcile failed: %s; trying again in %.0fs", err, self.interval_seconds)
            except Exception:  # the loop must survive anything and try again next round
                log.exception("reconcile failed; trying again in %.0fs", self.interval_seconds)

    # -- prompt release: the pod watch ----------------------------------------------------

    def _on_pod(self, kind: str, pod: Mapping[str, Any]) -> None:
        """Release a reservation as soon as its pod is deleted or finishes.

        kube-scheduler retries a pod the extender rejected on the next cluster
        event - the very deletion that frees the room - at once, before this
        release can land (observed: within 5 ms, while the release takes a
        read and a write). The release goes to the filter's cache
        (``on_stored``), whose new room makes the extender requeue the
        pending pods (``extender.requeue``).
        """
        self.on_pod_event(kind, pod)

    def on_pod_event(self, kind: str, pod: Mapping[str, Any]) -> str | None:
        """Release the pod's reservation if it is gone or finished; returns the node released on, or ``None``."""
        state = PodState.of(pod)
        if kind == "DELETED":
            reason = "pod_gone"
        elif kind in ("ADDED", "MODIFIED") and state.phase in FINISHED_PHASES:
            reason = "pod_finished"
        else:
            return None
        node = _allocated_node(pod)
        if not node or not state.uid:
            return None  # never bound by us (or the periodic pass will find it)
        try:
            before = self.store.get(node)
            if before is None or state.uid not in before.pods:
                return None
            self._stored(self.store.update(node, lambda ledger: ledger.release(state.uid)))
        except StoreError as err:
            log.warning("reconcile: releasing pod %s on %s failed: %s", state.uid, node, err)
            return None
        log.info("reconcile: released pod %s on %s (%s)", state.uid, node, reason)
        if self.metrics is not None:
            self.metrics.reconcile_releases.labels(reason).inc()
        return node

    def _stored(self, ledger: NodeLedger) -> None:
        """A release is written: show it to the filter at once (its cache then requeues pending pods)."""
        if self.on_stored is not None:
            self.on_stored(ledger)

    # -- the periodic pass -----------------------------------------------------------------

    def _pods(self) -> dict[str, PodState]:
        items, _ = list_objects(self.core.list_pod_for_all_namespaces, request_timeout=self.request_timeout)
        if self.pods is not None:
            self.pods.seed(items)
        states = [PodState.of(pod) for pod in items]
        return {s.uid: s for s in states}

    def _pod_states(self) -> tuple[dict[str, PodState], bool]:
        """The pods to check reservations against, and whether they come from the watch's index (to confirm)."""
        index, passes = self.pods, self._passes
        self._passes += 1
        if index is None or not index.complete() or passes % self.full_every == 0:
            return self._pods(), False
        return index.states(), True

    def _read(self, namespace: str, name: str) -> PodState | None:
        pod = read_pod(self.core, namespace, name, self.request_timeout)
        return PodState.of(pod) if pod is not None else None

    def reconcile_once(self, now: dt.datetime | None = None) -> dict[str, list[str]]:
        """One pass over every ledger; returns node -> UIDs released."""
        pods, indexed = self._pod_states()
        ledgers, _ = self.store.list()
        now = now or dt.datetime.now(dt.UTC)
        released: dict[str, list[str]] = {}
        for ledger in ledgers:
            stale = self._stale(ledger, pods, now, confirm=indexed)
            stale = {
                uid: reason
                for uid, reason in stale.items()
                if reason != "never_bound" or self._fence(ledger.node, ledger.pods[uid], now)
            }
            if not stale:
                continue
            held = {uid: ledger.pods[uid].reserved_at for uid in stale}
            try:
                self._stored(self.store.update(ledger.node, partial(release_if_held, allocations=held)))
            except StoreError as err:
                log.warning("reconcile: releasing %s on %s failed: %s", sorted(stale), ledger.node, err)
                continue
            released[ledger.node] = sorted(stale)
            for uid, reason in stale.items():
                log.info("reconcile: released pod %s on %s (%s)", uid, ledger.node, reason)
                if self.metrics is not None:
                    self.metrics.reconcile_releases.labels(reason).inc()
        return released

    def _fence(self, node: str, allocation: PodAllocation, now: dt.datetime) -> bool:
        """Before a never-bound pod's reservation goes: mark the pod, so that no stalled bind completes on it.

        A bind that reserved and then stalled (a paused or frozen process, longer than the grace period)
        still holds the pod's resourceVersion, and its Binding is conditional on it. Writing the
        ``released`` annotation, conditional on the version just read showing the pod unbound, makes
        that Binding fail; a bind that reads the pod again sees its reservation named there and gives
        up (``extender.bind``). Whether the release may go ahead: not if the pod was bound, or changed,
        in between (the next pass decides again).
        """
        namespace, name = allocation.namespace, allocation.name
        try:
            pod = read_pod(self.core, namespace, name, self.request_timeout)
        except StoreError as err:
            log.warning(
                "reconcile: reading pod %s/%s before releasing its reservation failed: %s", namespace, name, err
            )
            return False
        if pod is None:
            return True  # gone: nothing can bind it
        reason = stale_reason(allocation, node, PodState.of(pod), now, self.grace_seconds)
        if reason != "never_bound":
            return reason is not None  # bound elsewhere or finished meanwhile (no bind can complete): release
        version = (pod.get("metadata") or {}).get("resourceVersion")
        body = {
            "metadata": {
                "resourceVersion": version,  # a precondition: unbound, as just read
                "annotations": {names.RELEASED: released_annotation(node, allocation.reserved_at)},
            }
        }
        try:
            self.core.patch_namespaced_pod(name, namespace, body, _request_timeout=self.request_timeout)
        except API_FAILURES as err:
            error = api_error(err, f"marking pod {namespace}/{name}'s reservation on {node} released")
            if isinstance(error, NotFound):
                return True
            log.info("reconcile: %s; deciding again next pass", error)
            return False
        return True

    def _stale(
        self, ledger: NodeLedger, pods: Mapping[str, PodState], now: dt.datetime, *, confirm: bool = False
    ) -> dict[str, str]:
        """``confirm``: ``pods`` is the watch's index, so a release is decided on a direct read of the pod."""
        stale: dict[str, str] = {}
        for uid, allocation in ledger.pods.items():
            pod = pods.get(uid)
            read = pod is None
            if read:  # not in the list: confirm, it may be newer than the list
                pod = self._read(allocation.namespace, allocation.name)
            reason = stale_reason(allocation, ledger.node, pod, now, self.grace_seconds)
            if reason is not None and confirm and not read:
                reason = stale_reason(
                    allocation, ledger.node, self._read(allocation.namespace, allocation.name), now, self.grace_seconds
                )
            if reason is not None:
                stale[uid] = reason
        return stale


def _allocated_node(pod: Mapping[str, Any]) -> str:
    """The node named in the pod's allocation annotation (written at bind), else ``""``."""
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(names.ALLOCATION)
    if not value:
        return ""
    try:
        node = json.loads(value).get("node")
    except (ValueError, AttributeError):
        return ""
    return node if isinstance(node, str) else ""
