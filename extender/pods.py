"""The extender's one watch on pods: what bind needs of pending real-time pods, and events for the reconciler.

One list-then-watch (``rtdra.listwatch``) per process: the list takes only
unbound pods (those bind may be asked about), the watch then follows every
pod, so that deletions and completions of bound pods are seen too. Two parts
of the extender use it:

- bind looks up the pending pod it is asked to bind (:meth:`PodWatch.pending_pod`)
  instead of reading it from the API;
- the reconciler subscribes (:meth:`PodWatch.subscribe`) to release a
  reservation as soon as its pod is deleted or finishes, and checks its
  periodic pass against the real-time pods the watch has seen
  (:meth:`PodWatch.states`) instead of listing every pod each round.

Of a pending pod only what bind needs is kept (:func:`pending_view`); of every
real-time pod (:func:`asks_rt`) its UID, node and phase (:class:`PodState`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kubernetes import client

from rtdra import names
from rtdra.listwatch import ObjectEvent, object_feed
from rtdra.request import has_rt_request

log = logging.getLogger(__name__)

FINISHED_PHASES: Final = ("Succeeded", "Failed")

#: ``(event type, pod)``, called in the watch thread for every pod event.
PodListener = Callable[[str, Mapping[str, Any]], None]


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


def is_pending_rt_pod(pod: Mapping[str, Any]) -> bool:
    """An unbound pod, not being deleted, asking for real-time bandwidth (webhook spec, user annotations or the
    opt-in resource)."""
    if (pod.get("spec") or {}).get("nodeName") or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if str((pod.get("status") or {}).get("phase") or "") in FINISHED_PHASES:
        return False
    return asks_rt(pod)


def asks_rt(pod: Mapping[str, Any]) -> bool:
    """Whether the pod asks for real-time bandwidth or was bound with some (its allocation annotation)."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if names.SPEC in annotations or names.ALLOCATION in annotations or has_rt_request(annotations):
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


class PodWatch:
    """Pending real-time pods by UID, kept by a watch on all pods; listeners hear every event.

    It also keeps the :class:`PodState` of every real-time pod it has seen and not seen go. That
    index is only as complete as what was listed: the watch's own list takes the unbound pods
    alone, so the reconciler's full pass, which lists every pod, fills it (:meth:`seed`), and
    until then (and after any list of the watch's own, which may have missed deletions) it is
    not :meth:`complete`.
    """

    def __init__(
        self, api: client.ApiClient, *, watch_timeout_seconds: int = 300, request_timeout: float = 30.0
    ) -> None:
        self.core = client.CoreV1Api(api)
        self._lock = threading.Lock()
        self._pending: dict[str, dict[str, Any]] = {}
        self._states: dict[str, PodState] = {}
        self._complete = False
        self._listeners: list[PodListener] = []
        self.feed = object_feed(
            "pod-watch",
            self.core.list_pod_for_all_namespaces,
            on_list=self._replace_all,
            on_event=self._apply,
            request_timeout=request_timeout,
            timeout_seconds=watch_timeout_seconds,
            # Lists the unbound pods, then watches every pod: deletions of bound pods matter too (above).
            list_only={"field_selector": "spec.nodeName="},
        )

    def start(self) -> PodWatch:
        self.feed.start()
        return self

    def stop(self) -> None:
        self.feed.stop()

    def subscribe(self, listener: PodListener) -> None:
        self._listeners.append(listener)

    # -- what bind and the reconciler ask ------------------------------------------

    def pending_pod(self, uid: str) -> Mapping[str, Any] | None:
        """The pending real-time pod with ``uid`` as last seen (what bind needs of it), or ``None``."""
        return self._pending.get(uid)

    def pending(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """At most ``limit`` pending real-time pods, ``(uid, view)``."""
        with self._lock:
            return list(self._pending.items())[:limit]

    def complete(self) -> bool:
        """Whether :meth:`states` holds every real-time pod (see the class docstring)."""
        return self._complete

    def states(self) -> dict[str, PodState]:
        """UID -> state of the real-time pods seen and not seen go (a copy)."""
        with self._lock:
            return dict(self._states)

    def seed(self, pods: Sequence[Mapping[str, Any]]) -> None:
        """A list of *every* pod, just taken: track each, drop the states of pods it does not hold."""
        listed = {str((p.get("metadata") or {}).get("uid") or "") for p in pods}
        for pod in pods:
            self.track(pod)
        with self._lock:
            self._states = {uid: state for uid, state in self._states.items() if uid in listed}
            self._complete = True

    def track(self, pod: Mapping[str, Any], *, deleted: bool = False) -> None:
        """Remember the pod if it is a pending real-time pod, else forget it (and its state, if real-time)."""
        metadata = pod.get("metadata") or {}
        uid = str(metadata.get("uid") or "")
        pending = not deleted and is_pending_rt_pod(pod)
        rt = not deleted and (pending or asks_rt(pod))
        with self._lock:
            if pending:
                self._pending[uid] = pending_view(pod)
            else:
                self._pending.pop(uid, None)
            if rt:
                self._states[uid] = PodState.of(pod)
            else:
                self._states.pop(uid, None)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._pending.pop(uid, None)

    # -- the feed ----------------------------------------------------------------

    def _replace_all(self, pods: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            self._pending = {}
            self._complete = False  # the unbound pods alone: deletions of bound ones may have been missed
        for pod in pods:
            self.track(pod)

    def _apply(self, event: ObjectEvent) -> None:
        self.track(event.object, deleted=event.type == "DELETED")
        for listener in self._listeners:
            listener(event.type, event.object)
