"""The extender's view of every node's ledger, fed by a watch on NodeAllocationState objects.

Filter and prioritize answer from this cache and make no API call; only bind
reads and writes the API (through ``rtdra.store``), so a stale cache can make
the scheduler try a node that is full by now - bind then refuses - but can
never overcommit a CPU.

The feed is the project's one list-then-watch (``rtdra.listwatch``): each
complete list replaces the cache, each ADDED/MODIFIED/DELETED is applied.
Each gunicorn worker runs its own feed in a daemon thread. A cache can also be built from ledgers directly (tests,
the benchmark); it is then synced from the start.

Reads are lock-free: single dict operations are atomic under the GIL and a
re-list swaps in a whole new dict.

When a ledger it takes in has more room than the one it held (a release, a
ledger turned Ready, more capacity, a new node), the cache calls ``on_room``
- the extender's :class:`extender.requeue.Requeuer` - after the filter can see it.
"""

from __future__ import annotations

import gc
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

from rtdra.ledger import NodeLedger
from rtdra.listwatch import ListWatch
from rtdra.placement import NodeDigest
from rtdra.store import NasEvent, NasStore


class NodeIndex(Protocol):
    """Something derived from every node's ledger and told of each node whose ledger changed."""

    def changed(self, node: str) -> None: ...


IndexT = TypeVar("IndexT", bound=NodeIndex)

#: How many indexes (the filter keeps one per pod demand) the cache keeps current; the least used goes.
MAX_INDEXES = 32


class LedgerCache:
    """Node name -> :class:`NodeLedger`, as last seen."""

    def __init__(
        self,
        ledgers: Iterable[NodeLedger] = (),
        *,
        synced: bool = True,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        self._digests: dict[str, NodeDigest] = {ledger.node: NodeDigest.of(ledger) for ledger in ledgers}
        self._changes = itertools.count(1)  # next() is atomic under the GIL; += would not be
        self._generation = 0
        self._assume_lock = threading.Lock()
        #: node -> {pod UID: bandwidth} of this process's binds between their decision and their write.
        self._assumed: dict[str, dict[str, int]] = {}
        #: Nodes the filter turned a pod away from because of assumed binds (see :meth:`forget`).
        self._turned_away: set[str] = set()
        #: Called after a ledger with more room than before is in the cache (see :func:`more_room`).
        self.on_room = on_room
        self._index_lock = threading.Lock()
        self._indexes: OrderedDict[str, NodeIndex] = OrderedDict()
        self._synced = threading.Event()
        if synced:
            self._synced.set()

    @property
    def synced(self) -> bool:
        """Whether the cache has seen a complete list at least once."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def get(self, node: str) -> NodeLedger | None:
        digest = self._digests.get(node)
        return digest.ledger if digest is not None else None

    @property
    def digests(self) -> Mapping[str, NodeDigest]:
        """Node name -> the ledger with its totals (read-only by convention; a re-list replaces it)."""
        return self._digests

    @property
    def generation(self) -> int:
        """A number that grows whenever the cache changes: equal numbers, the same ledgers."""
        return self._generation

    def _changed(self, node: str | None = None) -> None:
        """After a change: ``node``'s ledger (or, for ``None``, every ledger: the indexes start over)."""
        self._generation = next(self._changes)
        with self._index_lock:
            if node is None:
                self._indexes = OrderedDict()
            else:
                for index in self._indexes.values():
                    index.changed(node)

    def index(self, key: str, make: Callable[[], IndexT]) -> IndexT:
        """The index kept under ``key`` (``make`` builds it the first time), told of every change from now on.

        An index must read a ledger only after it was told of its change; it may
        be told of changes it then reads anyway. A re-list drops every index
        (they start over); at most :data:`MAX_INDEXES` are kept, the least used dropped.
        """
        with self._index_lock:
            index = self._indexes.get(key)
            if index is None:
                index = self._indexes[key] = make()
                while len(self._indexes) > MAX_INDEXES:
                    self._indexes.popitem(last=False)
            else:
                self._indexes.move_to_end(key)
            return index  # type: ignore[return-value]

    # -- binds in flight ("assume", as kube-scheduler's own cache does) --------------------------------

    def assume(self, node: str, uid: str, bandwidth: int) -> None:
        """A bind of pod ``uid`` to ``node`` is about to write ``bandwidth``: the filter counts it meanwhile."""
        with self._assume_lock:
            self._assumed.setdefault(node, {})[uid] = bandwidth

    def forget(self, node: str, uid: str, *, stored: bool) -> None:
        """The bind's write is over: in the cache (``stored``) or never made.

        A bind that wrote nothing leaves room the filter has been hiding; if it
        turned a pod away for it, ``on_room`` sends the pending pods back.
        """
        with self._assume_lock:
            pods = self._assumed.get(node)
            if pods is None or pods.pop(uid, None) is None:
                return
            if not pods:
                del self._assumed[node]
            hid_room = not stored and node in self._turned_away
            if not pods or hid_room:
                self._turned_away.discard(node)
        if hid_room and self.on_room is not None:
            self.on_room()

    def assumed(self) -> dict[str, int]:
        """Node -> the bandwidth of this process's binds in flight to it (a copy; usually a few nodes)."""
        with self._assume_lock:
            return {node: sum(pods.values()) for node, pods in self._assumed.items()}

    def turned_away(self, node: str) -> None:
        """The filter refused ``node`` for assumed binds alone."""
        with self._assume_lock:
            if node in self._assumed:
                self._turned_away.add(node)

    def __len__(self) -> int:
        return len(self._digests)

    def put(self, ledger: NodeLedger) -> None:
        """Record a ledger just written or seen, unless the cache holds a newer version of it.

        Writers (bind, the reconciler) put what they stored at once, ahead of
        the watch; the watch may then still deliver older versions of the
        same object, which must not take the cache back - a release would
        seem undone, and the pod requeued for the room it freed filtered out
        again. Versions compare as numbers where both are (etcd's are).
        """
        held = self._digests.get(ledger.node)
        if held is not None and _older(ledger.resource_version, held.ledger.resource_version):
            return
        digest = NodeDigest.of(ledger)
        self._digests[ledger.node] = digest
        self._changed(ledger.node)
        if self.on_room is not None and more_room(held, digest):
            self.on_room()

    def remove(self, node: str) -> None:
        self._digests.pop(node, None)
        self._changed(node)

    def replace_all(self, ledgers: Iterable[NodeLedger]) -> None:
        """Install a complete list (the cache is then synced).

        The ledgers are hundreds of thousands of long-lived objects on a large
        cluster; ``gc.freeze()`` moves them out of the cyclic collector's sight,
        which otherwise rescans them all whenever a request's allocations
        trigger a full collection (that set the filter's p99). Values that go
        away are still freed by reference counting.
        """
        held = self._digests
        self._digests = {ledger.node: NodeDigest.of(ledger) for ledger in ledgers}
        self._changed()
        gc.freeze()
        self._synced.set()
        if self.on_room is not None and any(more_room(held.get(n), d) for n, d in self._digests.items()):
            self.on_room()


def more_room(held: NodeDigest | None, now: NodeDigest) -> bool:
    """Whether a pod the filter turned away on ``held`` could fit ``now``: a reservation left, the
    ledger turned Ready, capacity grew, or a Ready ledger appeared."""
    if not now.ready:
        return False
    if held is None or not held.ready:
        return True
    return (
        bool(held.ledger.pods.keys() - now.ledger.pods.keys())
        or now.total_capacity > held.total_capacity
        or now.root_capacity > held.root_capacity
        or any(a > b for a, b in zip(now.residuals, held.residuals, strict=False))
    )


def _older(version: str | None, than: str | None) -> bool:
    if not version or not than or not version.isdigit() or not than.isdigit():
        return False
    return int(version) < int(than)


class WatchedLedgerCache(LedgerCache):
    """A :class:`LedgerCache` kept current by list-then-watch (``rtdra.listwatch``) on a :class:`NasStore`."""

    def __init__(
        self,
        store: NasStore,
        *,
        watch_timeout_seconds: int = 300,
        retry_seconds: float = 1.0,
        on_room: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(synced=False, on_room=on_room)
        self.store = store
        self.feed: ListWatch[NodeLedger, NasEvent] = ListWatch(
            "nas-watch",
            store.list,
            lambda version, timeout: store.watch(version, timeout_seconds=timeout),
            on_list=self.replace_all,
            on_event=self._apply,
            timeout_seconds=watch_timeout_seconds,
            retry_seconds=retry_seconds,
        )

    def start(self) -> WatchedLedgerCache:
        self.feed.start()
        return self

    def stop(self) -> None:
        self.feed.stop()

    def _apply(self, event: NasEvent) -> None:
        if event.ledger is None:
            return
        if event.type == "DELETED":
            self.remove(event.ledger.node)
        else:
            self.put(event.ledger)
