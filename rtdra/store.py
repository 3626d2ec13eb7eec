"""The NodeAllocationState store: the ledger in the Kubernetes API, under optimistic concurrency.

This is the one place that reads and writes ``NodeAllocationState`` objects
(``nas.rt.resource.example.com/v1alpha1``, one per node, named after the node,
in the driver namespace). Everything above it works with
:class:`rtdra.ledger.NodeLedger` values.

Several writers share a ledger - extender replicas and their gunicorn workers
reserving, the node agent publishing capacity and readiness - and none holds
a lock. :meth:`NasStore.update` is a compare-and-swap loop instead: read the
object, apply a pure function to its ledger, replace it with the
``metadata.resourceVersion`` that was read; when the API answers 409 Conflict
(someone wrote in between) read again and re-apply the function to the new
value. The function therefore decides on what is really there, so no sequence
of concurrent updates can overcommit a CPU (``NodeLedger.reserve`` refuses).

The API is small on purpose::

    store = NasStore(api_client, namespace="rt-dra")
    ledger = store.get("node-1")                   # NodeLedger | None
    ledgers, rv = store.list()                     # every ledger + the list's resourceVersion
    for event in store.watch(rv, timeout_seconds=60): ...   # NasEvent(type, ledger, resource_version)
    store.create(NodeLedger("node-1", {0: cap, 1: cap}))
    store.update("node-1", lambda ledger: ledger.reserve(allocation))
    store.delete("node-1")

Errors: :class:`NotFound` (no ledger for the node), :class:`AlreadyExists`,
:class:`TooManyConflicts` (the CAS loop gave up), :class:`StoreError` for
anything else the API refused or a failure to reach it; whatever the update function raises (e.g.
``rtdra.ledger.Overcommit``) propagates unchanged and nothing is written.

Metadata the store does not model (labels, annotations, owner references) is
kept as read when the object is replaced.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, cast

from kubernetes import client

from rtdra import names
from rtdra.kube import (
    API_FAILURES,
    AlreadyExists,
    EventType,
    Expired,
    NotFound,
    StoreError,
    TooManyConflicts,
    api_error,
)
from rtdra.ledger import NodeLedger
from rtdra.listwatch import watch_objects

__all__ = [
    "AlreadyExists",
    "Expired",
    "NasEvent",
    "NasStore",
    "NotFound",
    "StoreError",
    "TooManyConflicts",
    "api_error",
]

#: How many times :meth:`NasStore.update` re-reads after a 409 before giving up.
DEFAULT_MAX_ATTEMPTS: Final = 16


@dataclass(frozen=True, slots=True)
class NasEvent:
    """One change seen by :meth:`NasStore.watch`; ``ledger`` is ``None`` for a bookmark."""

    type: EventType
    ledger: NodeLedger | None
    resource_version: str


class NasStore:
    """NodeAllocationState objects of one namespace, as :class:`NodeLedger` values."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str = names.DEFAULT_NAMESPACE,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        request_timeout: float = 10.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.max_attempts = max_attempts
        self.request_timeout = request_timeout
        self._objects = client.CustomObjectsApi(api)
        #: node -> the object as this store last read or wrote it (for ``update(..., reuse_last=True)``).
        self._last: dict[str, dict[str, Any]] = {}

    # -- reading ---------------------------------------------------------------

    def _args(self) -> tuple[str, str, str, str]:
        return names.NAS_GROUP, names.NAS_VERSION, self.namespace, names.NAS_PLURAL

    def get_object(self, node: str) -> dict[str, Any]:
        """The raw object, as the API returns it; raises :class:`NotFound`."""
        try:
            obj = self._objects.get_namespaced_custom_object(*self._args(), node, _request_timeout=self.request_timeout)
        except API_FAILURES as err:
            error = api_error(err, f"reading NodeAllocationState {self.namespace}/{node}")
            if isinstance(error, NotFound):
                self._last.pop(node, None)
            raise error from None
        self._last[node] = cast(dict[str, Any], obj)
        return self._last[node]

    def get(self, node: str) -> NodeLedger | None:
        """The node's ledger, or ``None`` if it has none."""
        try:
            return NodeLedger.from_nas(self.get_object(node))
        except NotFound:
            return None

    def list(self) -> tuple[list[NodeLedger], str]:
        """Every ledger of the namespace and the list's resourceVersion (to start a watch from)."""
        try:
            body = cast(
                dict[str, Any],
                self._objects.list_namespaced_custom_object(*self._args(), _request_timeout=self.request_timeout),
            )
        except API_FAILURES as err:
            raise api_error(err, f"listing NodeAllocationStates in {self.namespace}") from None
        ledgers = [NodeLedger.from_nas(obj) for obj in body.get("items") or []]
        return ledgers, str((body.get("metadata") or {}).get("resourceVersion", ""))

    def watch(self, resource_version: str, *, timeout_seconds: int = 60) -> Iterator[NasEvent]:
        """Changes after ``resource_version`` until the server ends the watch (after ``timeout_seconds``).

        Raises :class:`Expired` when the version is too old: list again.
        Each event line is parsed once (``rtdra.listwatch.watch_objects``).
        """
        for event in watch_objects(
            self._objects.list_namespaced_custom_object,
            *self._args(),
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            request_timeout=self.request_timeout,
        ):
            ledger = NodeLedger.from_nas(event.object) if event.type != "BOOKMARK" else None
            yield NasEvent(event.type, ledger, event.resource_version)

    # -- writing ---------------------------------------------------------------

    def create(self, ledger: NodeLedger) -> NodeLedger:
        """Create the node's object from ``ledger``; raises :class:`AlreadyExists`."""
        body = ledger.to_nas(self.namespace)
        body["metadata"].pop("resourceVersion", None)
        try:
            obj = self._objects.create_namespaced_custom_object(
                names.NAS_GROUP, names.NAS_VERSION, self.namespace, names.NAS_PLURAL, body,
                _request_timeout=self.request_timeout,
            )  # fmt: skip
        except API_FAILURES as err:
            raise api_error(err, f"creating NodeAllocationState {self.namespace}/{ledger.node}") from None
        return NodeLedger.from_nas(cast(dict[str, Any], obj))

    def replace(self, ledger: NodeLedger, metadata: Mapping[str, Any] | None = None) -> NodeLedger:
        """Write ``ledger`` if the object is still at ``ledger.resource_version``.

        A concurrent write makes it raise :class:`StoreError` with status 409;
        :meth:`update` is the retrying form. ``metadata`` (as read) keeps the
        fields the ledger does not model, such as labels.
        """
        body = ledger.to_nas(self.namespace)
        if metadata is not None:
            # managedFields stay out: the API server keeps the stored ones when a write
            # has none, and sending them back doubles what it decodes for every write.
            kept = {k: v for k, v in metadata.items() if k != "managedFields"}
            body["metadata"] = {**kept, **body["metadata"]}
        try:
            obj = self._objects.replace_namespaced_custom_object(
                *self._args(), ledger.node, body, _request_timeout=self.request_timeout
            )
        except API_FAILURES as err:
            error = api_error(err, f"writing NodeAllocationState {self.namespace}/{ledger.node}")
            if error.status == 409:
                raise StoreError(str(error), 409) from None
            raise error from None
        self._last[ledger.node] = cast(dict[str, Any], obj)
        return NodeLedger.from_nas(self._last[ledger.node])

    def update(self, node: str, change: Callable[[NodeLedger], NodeLedger], *, reuse_last: bool = False) -> NodeLedger:
        """Apply ``change`` to the node's current ledger and write it, retrying on conflict.

        ``change`` must be pure: it may run several times, each time on the
        latest ledger. If it returns its argument unchanged (the same object)
        nothing is written. Returns the ledger as stored.

        ``reuse_last``: first try the object as this store last read or wrote
        it, without reading - right whenever this store is the node's only
        recent writer (one process binding one after the other to the node
        ``pack`` fills). Only a successful write proves that version was
        current, so a decision that writes nothing (no change, or ``change``
        raised) on it is taken again on a fresh read, as is a 409.
        """
        obj = self._last.get(node) if reuse_last else None
        attempt = 0
        while attempt < self.max_attempts:
            remembered = obj is not None
            if obj is None:
                obj = self.get_object(node)
            current = NodeLedger.from_nas(obj)
            try:
                wanted = change(current)
            except Exception:
                if not remembered:
                    raise
                obj = None  # decided on what may be outdated: decide again on the API's value
                continue
            if wanted is current:
                if not remembered:
                    return current
                obj = None
                continue
            if wanted.node != node:
                raise ValueError(f"an update of {node} returned the ledger of {wanted.node}")
            try:
                return self.replace(_at_version(wanted, current.resource_version), obj.get("metadata") or {})
            except StoreError as err:
                if err.status != 409 and not (remembered and err.status == 404):
                    raise
            obj = None
            attempt += 1
            if not remembered:
                # Someone wrote in between: back off a little (jittered) and decide again.
                time.sleep(min(0.2, 0.002 * (2**attempt)) * random.random())
        raise TooManyConflicts(
            f"NodeAllocationState {self.namespace}/{node}: {self.max_attempts} concurrent writes in a row; try again",
            409,
        )

    def delete(self, node: str) -> None:
        """Delete the node's object (no error if it is gone already)."""
        self._last.pop(node, None)
        try:
            self._objects.delete_namespaced_custom_object(*self._args(), node, _request_timeout=self.request_timeout)
        except API_FAILURES as err:
            error = api_error(err, f"deleting NodeAllocationState {self.namespace}/{node}")
            if not isinstance(error, NotFound):
                raise error from None


def _at_version(ledger: NodeLedger, resource_version: str | None) -> NodeLedger:
    if ledger.resource_version == resource_version:
        return ledger
    return replace(ledger, resource_version=resource_version)
