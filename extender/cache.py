"""The extender's view of every node's ledger, fed by a watch on NodeAllocationState objects.

Filter and prioritize answer from this cache and make no API call; only bind
reads and writes the API (through ``rtdra.store``), so a stale cache can make
the scheduler try a node that is full by now - bind then refuses - but can
never overcommit a CPU.

The feed is the usual list-then-watch: list every object (and take the list's
resourceVersion), watch from there, apply ADDED/MODIFIED/DELETED, and list
again when the watch expires (410) or fails. Each gunicorn worker runs its own
feed in a daemon thread. A cache can also be built from ledgers directly (tests,
the benchmark); it is then synced from the start.

Reads are lock-free: single dict operations are atomic under the GIL and a
re-list swaps in a whole new dict.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterable, Mapping

from rtdra.ledger import NodeLedger
from rtdra.placement import NodeDigest
from rtdra.store import Expired, NasStore, StoreError

log = logging.getLogger(__name__)


class LedgerCache:
    """Node name -> :class:`NodeLedger`, as last seen."""

    def __init__(self, ledgers: Iterable[NodeLedger] = (), *, synced: bool = True) -> None:
        self._digests: dict[str, NodeDigest] = {ledger.node: NodeDigest.of(ledger) for ledger in ledgers}
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

    def __len__(self) -> int:
        return len(self._digests)

    def put(self, ledger: NodeLedger) -> None:
        """Record a ledger just written or seen (a later watch event may replace it)."""
        self._digests[ledger.node] = NodeDigest.of(ledger)

    def remove(self, node: str) -> None:
        self._digests.pop(node, None)

    def replace_all(self, ledgers: Iterable[NodeLedger]) -> None:
        """Install a complete list (the cache is then synced).

        The ledgers are hundreds of thousands of long-lived objects on a large
        cluster; ``gc.freeze()`` moves them out of the cyclic collector's sight,
        which otherwise rescans them all whenever a request's allocations
        trigger a full collection (that set the filter's p99). Values that go
        away are still freed by reference counting.
        """
        self._digests = {ledger.node: NodeDigest.of(ledger) for ledger in ledgers}
        gc.freeze()
        self._synced.set()


class WatchedLedgerCache(LedgerCache):
    """A :class:`LedgerCache` kept current by list-then-watch on a :class:`NasStore`."""

    def __init__(self, store: NasStore, *, watch_timeout_seconds: int = 300, retry_seconds: float = 1.0) -> None:
        super().__init__(synced=False)
        self.store = store
        self.watch_timeout_seconds = watch_timeout_seconds
        self.retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WatchedLedgerCache:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nas-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ledgers, version = self.store.list()
                self.replace_all(ledgers)
                log.info("ledger cache: listed %d NodeAllocationStates at resourceVersion %s", len(ledgers), version)
                self._follow(version)
            except Expired:
                log.info("ledger cache: watch expired; listing again")
                continue
            except (StoreError, OSError, ValueError) as err:
                log.warning("ledger cache: %s; retrying in %.1fs", err, self.retry_seconds)
            except Exception:  # a feed thread must not die silently
                log.exception("ledger cache: unexpected error; retrying in %.1fs", self.retry_seconds)
            self._stop.wait(self.retry_seconds)

    def _follow(self, version: str) -> None:
        while not self._stop.is_set():
            for event in self.store.watch(version, timeout_seconds=self.watch_timeout_seconds):
                if self._stop.is_set():
                    return
                version = event.resource_version or version
                if event.ledger is None:
                    continue
                if event.type == "DELETED":
                    self.remove(event.ledger.node)
                else:
                    self.put(event.ledger)
