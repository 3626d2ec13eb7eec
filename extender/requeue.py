"""Sending the real-time pods this process turned away back to kube-scheduler once its cache shows new room.

kube-scheduler never sees a ledger change: a pod the extender filtered out
waits for the next cluster event that concerns it, or for the scheduler's
5-minute flush. So when room appears - a reservation released, a ledger
becoming Ready, a CPU's capacity growing - the extender touches the pending
real-time pods it turned away (:data:`REQUEUE`, an annotation), which
kube-scheduler treats as an update worth a new attempt.

Which pods: those this process's filter passed on no node
(:meth:`Requeuer.turned_away`, recorded before the filter answers), and at
start-up the pending real-time pods kube-scheduler marked ``Unschedulable``
(a process before this one turned them away). Not every pending pod: a pod
still in the scheduler's active queue needs no touch, and touching it costs
a pod write that every pod watch receives. (Until 2026-11-30 every round
listed all unscheduled pods from the API and touched up to 256 of them; in
a burst of 1,000 pods on nodes filling up, one refused bind set that off and
its list and patches were a fifth of the extender's CPU.)

Two races decide how (both seen as a pod pending for minutes beside room):

- The touch must come *after* the filter can see the room, or the retry is
  filtered on the old ledger and nothing touches the pod again. Every process
  answering filters has its own cache (gunicorn workers, replicas), fed by its
  own watch; so each process requeues when *its* cache takes in the room
  (:class:`extender.cache.LedgerCache` calls :meth:`Requeuer.signal`), and a
  pod turned away on one process's stale cache and retried on another's is
  recorded by both.
- A filter that read the ledgers before the room came and records its pod
  after the round that room started took its pods: :meth:`turned_away` is
  given the count of room signals seen before the filter read anything, and
  signals again when that count moved.

Signals coalesce: one round of touches serves every release that came in meanwhile.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Final

from kubernetes import client

from extender.pods import is_pending_rt_pod
from rtdra import names
from rtdra.kube import API_FAILURES, NotFound, api_error, micro_time
from rtdra.listwatch import list_objects

log = logging.getLogger(__name__)

REQUEUE: Final = names.REQUEUE
#: The most pods one round touches (more wait for the next round, which starts at once).
REQUEUE_LIMIT: Final = 256


def is_unschedulable(pod: Mapping[str, Any]) -> bool:
    """kube-scheduler tried the pod and found no node (condition ``PodScheduled``, reason ``Unschedulable``)."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled":
            return bool(condition.get("status") == "False" and condition.get("reason") == "Unschedulable")
    return False


class Requeuer:
    """Touches the real-time pods this process turned away, in a thread of its own, each time it is signalled."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        request_timeout: float = 30.0,
        limit: int = REQUEUE_LIMIT,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.request_timeout = request_timeout
        self.limit = limit
        self._lock = threading.Lock()
        #: uid -> (namespace, name) of the pods turned away and not touched since.
        self._waiting: dict[str, tuple[str, str]] = {}
        self._rooms = 0
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Touches that differ between processes, so each one is an update the scheduler sees.
        self._origin = f"{os.uname().nodename}/{os.getpid()}"

    @property
    def rooms(self) -> int:
        """How many times room was signalled: read it before the filter reads the ledgers."""
        return self._rooms

    def signal(self) -> None:
        """Room appeared in this process's cache: requeue soon (a no-op until :meth:`start`)."""
        with self._lock:
            self._rooms += 1
        self._wanted.set()

    def turned_away(self, uid: str, namespace: str, name: str, *, rooms_before: int) -> None:
        """The filter passed pod ``uid`` on no node, having read the ledgers after ``rooms_before`` signals."""
        if not uid or not name:
            return
        with self._lock:
            self._waiting[uid] = (namespace, name)
            missed = self._rooms != rooms_before
        if missed:  # room came while the filter decided: that round may have gone without this pod
            self._wanted.set()

    def passed(self, uid: str) -> None:
        """The filter found a node for pod ``uid``: no touch needed any more."""
        if self._waiting:
            with self._lock:
                self._waiting.pop(uid, None)

    def waiting(self) -> dict[str, tuple[str, str]]:
        """The pods the next round touches (a copy)."""
        with self._lock:
            return dict(self._waiting)

    def start(self) -> Requeuer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="requeue", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()

    def _run(self) -> None:
        try:
            self.adopt_unschedulable()
        except Exception as err:  # the API away at start: the pods wait for their next attempt or the flush
            log.warning("requeue: could not list the unschedulable pods at start: %s", err)
        while True:
            self._wanted.wait()
            if self._stop.is_set():
                return
            self._wanted.clear()
            try:
                self.requeue_once()
            except Exception:  # the thread must survive anything; the next room tries again
                log.exception("requeueing pending pods failed")

    def pending(self) -> list[Mapping[str, Any]]:
        """The pending real-time pods, read from the API now (unscheduled pods, filtered here)."""
        items, _ = list_objects(
            self.core.list_pod_for_all_namespaces, field_selector="spec.nodeName=", request_timeout=self.request_timeout
        )
        return [p for p in items if is_pending_rt_pod(p)]

    def adopt_unschedulable(self) -> int:
        """At start: record the pending RT pods kube-scheduler marked unschedulable (turned away before this
        process ran, by it or by another); returns how many."""
        adopted = 0
        for pod in self.pending():
            if is_unschedulable(pod):
                metadata = pod["metadata"]
                with self._lock:
                    self._waiting.setdefault(str(metadata.get("uid") or ""), (metadata["namespace"], metadata["name"]))
                adopted += 1
        return adopted

    def requeue_once(self) -> int:
        """Touch the pods turned away (at most ``limit``, another round follows for the rest); returns how many
        were touched.

        A pod leaves the set before its touch, so its retry, turned away again, is recorded
        again; one pod's failure does not keep the others waiting, and it stays for the next round.
        """
        with self._lock:
            batch = list(itertools.islice(self._waiting.items(), self.limit))
            for uid, _ in batch:
                del self._waiting[uid]
            more = bool(self._waiting)
        if not batch:
            return 0
        stamp = f"{micro_time(dt.datetime.now(dt.UTC))} {self._origin}"
        body = {"metadata": {"annotations": {REQUEUE: stamp}}}
        touched = 0
        for uid, (namespace, name) in batch:
            try:
                self.core.patch_namespaced_pod(name, namespace, body, _request_timeout=self.request_timeout)
                touched += 1
            except API_FAILURES as err:
                error = api_error(err, f"requeueing pod {namespace}/{name}")
                if not isinstance(error, NotFound):
                    log.warning("could not requeue: %s", error)
                    with self._lock:
                        self._waiting.setdefault(uid, (namespace, name))
        if more:
            self._wanted.set()
        if touched:
            log.info("requeued %d pending real-time pods", touched)
        return touched
