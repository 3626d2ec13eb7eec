"""Sending pending real-time pods back to kube-scheduler once this process's cache shows new room.

kube-scheduler never sees a ledger change: a pod the extender filtered out
waits for the next cluster event that concerns it, or for the scheduler's
5-minute flush. So when room appears - a reservation released, a ledger
becoming Ready, a CPU's capacity growing - the extender touches every pending
real-time pod (:data:`REQUEUE`, an annotation), which kube-scheduler treats
as an update worth a new attempt.

Two races decide how (both seen as a pod pending for minutes beside room):

- The touch must come *after* the filter can see the room, or the retry is
  filtered on the old ledger and nothing touches the pod again. Every process
  answering filters has its own cache (gunicorn workers, replicas), fed by its
  own watch; so each process requeues when *its* cache takes in the room
  (:class:`extender.cache.LedgerCache` calls :meth:`Requeuer.signal`). The last
  touch then comes after every cache has the room.
- The pods to touch are listed from the API at that moment, not taken from a
  pod watch: a pod created just before the release may not have reached the
  watch yet, while the scheduler already filtered it on the old ledger. A list
  is a consistent read, so every pod created before the room reached the cache
  is in it; a pod created later is filtered on the new cache anyway.

Signals coalesce: one list and one round of touches serves every release
that came in meanwhile.
"""

from __future__ import annotations

import datetime as dt
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
#: The most pods one round touches (the rest wait for the next room, or the scheduler's flush).
REQUEUE_LIMIT: Final = 256


class Requeuer:
    """Touches the pending real-time pods, in a thread of its own, each time it is signalled."""

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
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Touches that differ between processes, so each one is an update the scheduler sees.
        self._origin = f"{os.uname().nodename}/{os.getpid()}"

    def signal(self) -> None:
        """Room appeared in this process's cache: requeue soon (a no-op until :meth:`start`)."""
        self._wanted.set()

    def start(self) -> Requeuer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="requeue", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()

    def _run(self) -> None:
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

    def requeue_once(self) -> int:
        """Touch every pending RT pod (at most ``limit``); returns how many were touched.

        One pod's failure does not keep the others waiting.
        """
        stamp = f"{micro_time(dt.datetime.now(dt.UTC))} {self._origin}"
        body = {"metadata": {"annotations": {REQUEUE: stamp}}}
        touched = 0
        for pod in self.pending()[: self.limit]:
            metadata = pod["metadata"]
            namespace, name = metadata["namespace"], metadata["name"]
            try:
                self.core.patch_namespaced_pod(name, namespace, body, _request_timeout=self.request_timeout)
                touched += 1
            except API_FAILURES as err:
                error = api_error(err, f"requeueing pod {namespace}/{name}")
                if not isinstance(error, NotFound):
                    log.warning("could not requeue: %s", error)
        if touched:
            log.info("requeued %d pending real-time pods", touched)
        return touched
