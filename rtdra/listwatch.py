"""List-then-watch, written once: how every RT-DRA process keeps up with a kind of API object.

The extender's ledger cache (NodeAllocationStates), its RtClaimParameters
cache and its pod watch, and the test harness's node simulator all follow the
same loop (:class:`ListWatch`):

1. list every object and take the list's ``resourceVersion``;
2. watch from there (with bookmarks, so an idle watch still advances its
   version), each event handed to the owner; a watch the server ends after
   ``timeout_seconds`` is started again from the last version seen;
3. a version too old (HTTP 410, :class:`rtdra.kube.Expired`) lists again at
   once; any other failure waits a jittered, growing delay (up to
   ``max_retry_seconds``) and lists again, so that many workers or replicas
   never retry in lockstep.

:func:`list_objects` and :func:`watch_objects` list and watch raw objects
(one ``json.loads`` per event line, as the client's own ``Watch`` would parse
each object three times) through a generated client method, mapping API
errors by :func:`rtdra.kube.api_error` - the one mapping of status codes to
exceptions; :func:`object_feed` is the :class:`ListWatch` of such a method.
What an event *means* stays with the owner.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from kubernetes.watch.watch import iter_resp_lines

from rtdra.kube import API_FAILURES, EventType, Expired, StoreError, api_error

log = logging.getLogger(__name__)

Item = TypeVar("Item")
E = TypeVar("E", bound="Event")


class Event(Protocol):
    """What :class:`ListWatch` reads of an event: its type and the version it brings the watch to."""

    @property
    def type(self) -> EventType: ...

    @property
    def resource_version(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One watch event on a raw object (``object`` is empty for a bookmark)."""

    type: EventType
    object: Mapping[str, Any]
    resource_version: str


def list_objects(
    call: Callable[..., Any], *args: Any, request_timeout: float, **kwargs: Any
) -> tuple[list[dict[str, Any]], str]:
    """Every object ``call`` (a generated ``list_*`` method) returns, and the list's resourceVersion."""
    try:
        response = call(*args, _preload_content=False, _request_timeout=request_timeout, **kwargs)
        data = response.data  # the body is read here, and reading it can fail too
    except API_FAILURES as err:
        raise api_error(err, f"listing ({call.__name__})") from None
    body = json.loads(data)
    return list(body.get("items") or []), str((body.get("metadata") or {}).get("resourceVersion", ""))


def watch_objects(
    call: Callable[..., Any],
    *args: Any,
    resource_version: str,
    timeout_seconds: int,
    request_timeout: float,
    **kwargs: Any,
) -> Iterator[ObjectEvent]:
    """The events after ``resource_version`` until the server ends the watch; 410 raises :class:`Expired`."""
    what = f"watching ({call.__name__})"
    try:
        response = call(
            *args,
            watch=True,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
            _preload_content=False,
            _request_timeout=timeout_seconds + request_timeout,
            **kwargs,
        )
    except API_FAILURES as err:
        raise api_error(err, what) from None
    lines = iter_resp_lines(response)  # type: ignore[no-untyped-call]
    try:
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except API_FAILURES as err:  # the connection broke mid-watch
                raise api_error(err, what) from None
            if not line.strip():
                continue
            event = json.loads(line)
            kind = event.get("type")
            obj: Mapping[str, Any] = event.get("object") or {}
            if kind == "ERROR":
                status = int(obj.get("code") or 0)
                message = f"{what}: {status} {obj.get('reason', '')}: {obj.get('message', '')}"
                raise Expired(message, status) if status == 410 else StoreError(message, status)
            if kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                yield ObjectEvent(kind, obj, version)
    finally:
        response.close()
        response.release_conn()


class ListWatch(Generic[Item, E]):
    """Keeps one kind of object current: ``on_list`` gets each complete list, ``on_event`` each change.

    ``list_()`` returns the items and the list's resourceVersion;
    ``watch(version, timeout_seconds)`` the events after it. Bookmarks only
    advance the version. Runs in a daemon thread between :meth:`start` and
    :meth:`stop`.
    """

    def __init__(
        self,
        name: str,
        list_: Callable[[], tuple[Sequence[Item], str]],
        watch: Callable[[str, int], Iterable[E]],
        *,
        on_list: Callable[[Sequence[Item]], None],
        on_event: Callable[[E], None],
        timeout_seconds: int = 300,
        retry_seconds: float = 1.0,
        max_retry_seconds: float = 30.0,
    ) -> None:
        self.name = name
        self.list_ = list_
        self.watch = watch
        self.on_list = on_list
        self.on_event = on_event
        self.timeout_seconds = timeout_seconds
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ListWatch[Item, E]:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, join_seconds: float = 0.0) -> None:
        """Stop after the current event (waiting up to ``join_seconds`` for the thread to end)."""
        self._stop.set()
        if join_seconds and self._thread is not None:
            self._thread.join(timeout=join_seconds)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        """Whether the thread is alive (after :meth:`stop`: still finishing an event)."""
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        """List and watch until stopped (the thread's body)."""
        failures = 0
        while not self._stop.is_set():
            try:
                items, version = self.list_()
                self.on_list(items)
                self.synced.set()
                failures = 0
                log.debug("%s: listed %d objects at resourceVersion %s", self.name, len(items), version)
                self._follow(version)
            except Expired:
                log.info("%s: the watch expired; listing again", self.name)
                continue
            except Exception as err:  # a feed thread must survive anything and try again
                failures += 1
                delay = min(self.max_retry_seconds, self.retry_seconds * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.0)
                if isinstance(err, (StoreError, ValueError, *API_FAILURES)):  # expected: the API away, bad data
                    log.warning("%s: %s; listing again in %.1fs", self.name, err, delay)
                else:
                    log.exception("%s: unexpected error; listing again in %.1fs", self.name, delay)
                self._stop.wait(delay)

    def _follow(self, version: str) -> None:
        while not self._stop.is_set():
            for event in self.watch(version, self.timeout_seconds):
                if self._stop.is_set():
                    return
                version = event.resource_version or version
                if event.type != "BOOKMARK":
                    self.on_event(event)


def object_feed(
    name: str,
    call: Callable[..., Any],
    *args: Any,
    on_list: Callable[[Sequence[dict[str, Any]]], None],
    on_event: Callable[[ObjectEvent], None],
    request_timeout: float,
    timeout_seconds: int = 300,
    retry_seconds: float = 1.0,
    list_only: Mapping[str, Any] | None = None,
    **selectors: Any,
) -> ListWatch[dict[str, Any], ObjectEvent]:
    """The :class:`ListWatch` of the raw objects ``call`` (a generated ``list_*`` method) returns.

    ``args`` and ``selectors`` (``field_selector=...``, ``label_selector=...``) go to both the list
    and the watch; ``list_only`` to the list alone (the pod watch lists the unscheduled pods but
    watches them all, to hear of the ones that get bound or go).
    """
    return ListWatch(
        name,
        lambda: list_objects(call, *args, request_timeout=request_timeout, **selectors, **(list_only or {})),
        lambda version, timeout: watch_objects(
            call,
            *args,
            resource_version=version,
            timeout_seconds=timeout,
            request_timeout=request_timeout,
            **selectors,
        ),
        on_list=on_list,
        on_event=on_event,
        timeout_seconds=timeout_seconds,
        retry_seconds=retry_seconds,
    )
