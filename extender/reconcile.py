"""The reconcile loop: release reservations no pod will use.

A reservation in a NodeAllocationState is kept while its pod (by UID - a
recreated pod with the same name has a new UID) exists, is not finished, and
is bound to that node or still within the bind grace period after
``reservedAt``. It is released when the pod

- is gone (deleted, or replaced by a pod with another UID),
- has finished (phase ``Succeeded`` or ``Failed``),
- is bound to another node, or
- is still unbound ``grace_seconds`` after the reservation (a bind that
  crashed between reserving and creating the Binding).

"Gone" is confirmed with a direct read of the pod after the reservation was
seen, so a pod created after the pod list was taken is never mistaken for a
deleted one. Besides the periodic pass, a watch on pods releases a reservation as soon as
its pod (found through its ``rt.resource.example.com/allocation`` annotation)
is deleted or finishes, and after any release the pending real-time pods are
touched (``rt.resource.example.com/requeue``) so that kube-scheduler tries them
again - it does not see ledgers change. The same watch keeps what bind needs
of each pending real-time pod (:meth:`Reconciler.pending_pod`), so that bind
need not read the pod. Releasing goes through the same compare-and-swap as
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
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from extender.metrics import Metrics
from rtdra import names
from rtdra.ledger import NodeLedger, PodAllocation
from rtdra.request import has_rt_request
from rtdra.store import NasStore, StoreError

log = logging.getLogger(__name__)

FINISHED_PHASES = ("Succeeded", "Failed")
#: Written on pending RT pods after bandwidth was released, so that kube-scheduler tries them again.
REQUEUE: Final = names.REQUEUE
#: At most this many pending pods are touched per release.
REQUEUE_LIMIT: Final = 256


def is_pending_rt_pod(pod: Mapping[str, Any]) -> bool:
    """An unbound pod asking for real-time bandwidth (webhook spec, user annotations or the opt-in resource)."""
    if (pod.get("spec") or {}).get("nodeName"):
        return False
    if str((pod.get("status") or {}).get("phase") or "") in FINISHED_PHASES:
        return False
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if names.SPEC in annotations or has_rt_request(annotations):
        return True
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        if names.DL_RESOURCE in (resources.get("requests") or {}) or names.DL_RESOURCE in (
            resources.get("limits") or {}
        ):
            return True
    return False


def pending_view(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What bind needs of a pending pod: its identity, resourceVersion, our annotations, container names."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    return {
        "metadata": {
            "name": str(metadata.get("name") or ""),
            "namespace": str(metadata.get("namespace") or ""),
            "uid": str(metadata.get("uid") or ""),
            "resourceVersion": str(metadata.get("resourceVersion") or ""),
            "annotations": {k: v for k, v in annotations.items() if k.startswith(names.PREFIX)},
        },
        "spec": {
            key: [{"name": c.get("name")} for c in spec.get(key) or [] if isinstance(c, Mapping)]
            for key in ("containers", "initContainers")
        },
    }


@dataclass(frozen=True, slots=True)
class PodState:
    """What reconciling needs of a pod."""

    uid: str
    node: str
    phase: str

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodState:
        return cls(
            uid=str((pod.get("metadata") or {}).get("uid", "")),
            node=str((pod.get("spec") or {}).get("nodeName") or ""),
            phase=str((pod.get("status") or {}).get("phase") or ""),
        )


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
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.store = store
        self.grace_seconds = grace_seconds
        self.interval_seconds = interval_seconds
        self.metrics = metrics
        self.request_timeout = request_timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Pending real-time pods by UID, as the pod watch sees them (:func:`pending_view`).
        self._pending: dict[str, dict[str, Any]] = {}

    def start(self, *, watch_pods: bool = True) -> Reconciler:
        """Run the periodic pass, and (``watch_pods``) release promptly on pod deletion or completion."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
            self._thread.start()
            if watch_pods:
                threading.Thread(target=self._watch_pods, name="reconcile-pods", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # Jitter keeps several workers/replicas from reconciling in lockstep.
        while not self._stop.wait(self.interval_seconds * random.uniform(0.75, 1.25)):
            try:
                self.reconcile_once()
            except Exception:  # the loop must survive anything and try again next round
                log.exception("reconcile failed; trying again in %.0fs", self.interval_seconds)

    # -- prompt release: a watch on pods -------------------------------------------------

    def _watch_pods(self) -> None:
        """Release a reservation as soon as its pod is deleted or finishes, then requeue pending RT pods.

        kube-scheduler retries a pod the extender rejected on the next cluster
        event - the very deletion that frees the room - at once, before this
        release can land (observed: within 5 ms, while the release takes a
        read and a write). Nothing it watches changes when a ledger does, so
        the pod would wait for the next unrelated event or for the scheduler's
        5-minute flush. After releasing, the extender therefore touches each
        pending real-time pod (:data:`REQUEUE`), which kube-scheduler treats as
        an update worth a new attempt.
        """
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._list_pending()
                stream = watch.Watch()  # type: ignore[no-untyped-call]
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.core.list_pod_for_all_namespaces,
                    resource_version=version,
                    timeout_seconds=300,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                    _request_timeout=300 + self.request_timeout,
                ):
                    if self._stop.is_set():
                        return
                    pod = event.get("object") or {}
                    version = str((pod.get("metadata") or {}).get("resourceVersion") or version)
                    if self.on_pod_event(str(event.get("type")), pod):
                        self.requeue_pending()
            except ApiException as err:
                if err.status == 410:
                    version = ""  # too old: list again (the periodic pass covers the gap)
                    continue
                log.warning("reconcile: watching pods failed: %s", err)
                self._stop.wait(1.0)
            except Exception:  # the watch must survive anything
                # Includes the client's KeyError on an ERROR event (a 410 among them) with
                # deserialize=False: list again rather than re-watch the same version forever.
                log.exception("reconcile: watching pods failed; listing again")
                version = ""
                self._stop.wait(1.0)

    def _list_pending(self) -> str:
        """Learn the pending RT pods; returns the resourceVersion to watch from."""
        listed: Any = self.core.list_pod_for_all_namespaces(
            field_selector="spec.nodeName=", _preload_content=False, _request_timeout=self.request_timeout
        )
        body = json.loads(listed.data)
        with self._lock:
            self._pending = {}
        for pod in body.get("items") or []:
            self._track(pod, deleted=False)
        return str((body.get("metadata") or {}).get("resourceVersion", ""))

    def _track(self, pod: Mapping[str, Any], *, deleted: bool) -> None:
        metadata = pod.get("metadata") or {}
        uid = str(metadata.get("uid") or "")
        pending = not deleted and not metadata.get("deletionTimestamp") and is_pending_rt_pod(pod)
        with self._lock:
            if pending:
                self._pending[uid] = pending_view(pod)
            else:
                self._pending.pop(uid, None)

    def on_pod_event(self, kind: str, pod: Mapping[str, Any]) -> str | None:
        """Track pending RT pods; release the pod's reservation if it is gone or finished.

        Returns the node released on, or ``None``.
        """
        self._track(pod, deleted=kind == "DELETED")
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
            self.store.update(node, partial(_release, uids=(state.uid,)))
        except StoreError as err:
            log.warning("reconcile: releasing pod %s on %s failed: %s", state.uid, node, err)
            return None
        log.info("reconcile: released pod %s on %s (%s)", state.uid, node, reason)
        if self.metrics is not None:
            self.metrics.reconcile_releases.labels(reason).inc()
        return node

    def pending_pod(self, uid: str) -> Mapping[str, Any] | None:
        """The pending real-time pod with ``uid`` as last seen (what bind needs of it), or ``None``."""
        return self._pending.get(uid)

    def requeue_pending(self) -> int:
        """Touch every pending RT pod (at most :data:`REQUEUE_LIMIT`) so kube-scheduler tries it again."""
        with self._lock:
            pending = list(self._pending.items())[:REQUEUE_LIMIT]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        touched = 0
        for uid, pod in pending:
            namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            body = {"metadata": {"annotations": {REQUEUE: stamp}}}
            try:
                self.core.patch_namespaced_pod(name, namespace, body, _request_timeout=self.request_timeout)
                touched += 1
            except ApiException as err:
                if err.status != 404:
                    log.warning("reconcile: could not requeue pod %s/%s: %s", namespace, name, err)
                with self._lock:
                    self._pending.pop(uid, None)
        return touched

    # -- the periodic pass -----------------------------------------------------------------

    def _pods(self) -> dict[str, PodState]:
        response: Any = self.core.list_pod_for_all_namespaces(
            _preload_content=False, _request_timeout=self.request_timeout
        )
        items = json.loads(response.data).get("items") or []
        for pod in items:
            self._track(pod, deleted=False)
        states = [PodState.of(pod) for pod in items]
        return {s.uid: s for s in states}

    def _read(self, namespace: str, name: str) -> PodState | None:
        try:
            response: Any = self.core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=self.request_timeout
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return PodState.of(json.loads(response.data))

    def reconcile_once(self, now: dt.datetime | None = None) -> dict[str, list[str]]:
        """One pass over every ledger; returns node -> UIDs released."""
        pods = self._pods()
        ledgers, _ = self.store.list()
        now = now or dt.datetime.now(dt.UTC)
        released: dict[str, list[str]] = {}
        for ledger in ledgers:
            stale = self._stale(ledger, pods, now)
            if not stale:
                continue
            uids = tuple(stale)
            try:
                self.store.update(ledger.node, partial(_release, uids=uids))
            except StoreError as err:
                log.warning("reconcile: releasing %s on %s failed: %s", sorted(stale), ledger.node, err)
                continue
            released[ledger.node] = sorted(stale)
            for uid, reason in stale.items():
                log.info("reconcile: released pod %s on %s (%s)", uid, ledger.node, reason)
                if self.metrics is not None:
                    self.metrics.reconcile_releases.labels(reason).inc()
        if released:
            self.requeue_pending()
        return released

    def _stale(self, ledger: NodeLedger, pods: Mapping[str, PodState], now: dt.datetime) -> dict[str, str]:
        stale: dict[str, str] = {}
        for uid, allocation in ledger.pods.items():
            pod = pods.get(uid)
            if pod is None:  # not in the list: confirm, it may be newer than the list
                pod = self._read(allocation.namespace, allocation.name)
            reason = stale_reason(allocation, ledger.node, pod, now, self.grace_seconds)
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


def _release(ledger: NodeLedger, uids: tuple[str, ...]) -> NodeLedger:
    for uid in uids:
        ledger = ledger.release(uid)
    return ledger
