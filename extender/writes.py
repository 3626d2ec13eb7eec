"""Ledger writes of one process, grouped per node: one compare-and-swap carries every change waiting for the node.

kube-scheduler binds asynchronously, a goroutine per pod, and with ``pack``
it sends pod after pod to the same fullest node. Each bind changes that
node's NodeAllocationState; written one by one, the changes take turns (or,
without turns, fight over the resourceVersion and re-read after every lost
race), so a node takes no more binds per second than one read-and-write round
trip to the API allows.

:class:`NodeWrites` lets changes to the same node queue up while a write to it
is in flight; the next writer takes the whole queue and applies the changes
in arrival order to the freshest ledger in *one* ``NasStore.update``. Each
change is a pure ``NodeLedger -> NodeLedger`` step; a step that raises (a pod
that no longer fits) fails alone and the others still commit. Nothing here
weakens the store's guarantee: the batch is one compare-and-swap, re-decided
from a fresh read on 409, so other processes and replicas writing the same
ledger can never make it overcommit. The first attempt reuses the version this
process last wrote (``reuse_last``), which saves the read whenever this
process was the node's last writer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from extender.metrics import Metrics
from rtdra.ledger import NodeLedger
from rtdra.store import NasStore

Step = Callable[[NodeLedger], NodeLedger]


@dataclass(slots=True)
class _Change:
    step: Step
    done: bool = False
    error: BaseException | None = None
    stored: NodeLedger | None = None


@dataclass(slots=True)
class _Node:
    lock: threading.Lock = field(default_factory=threading.Lock)
    queue: list[_Change] = field(default_factory=list)


class NodeWrites:
    """Apply steps to nodes' ledgers, batching the steps that wait for the same node."""

    def __init__(
        self, store: NasStore, *, metrics: Metrics | None = None, on_stored: Callable[[NodeLedger], None] | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.on_stored = on_stored
        self._guard = threading.Lock()
        self._nodes: dict[str, _Node] = {}

    def apply(self, node: str, step: Step) -> NodeLedger:
        """Apply ``step`` to ``node``'s ledger (with whatever else waits); the ledger as stored.

        Raises what ``step`` raised on the ledger that was written, or the
        store's error for the whole batch (``NotFound``, ``TooManyConflicts`` ...).
        """
        change = _Change(step)
        with self._guard:
            state = self._nodes.get(node)
            if state is None:
                state = self._nodes[node] = _Node()
            state.queue.append(change)
        with state.lock:
            if not change.done:  # no writer took it: this thread writes the queue
                with self._guard:
                    batch, state.queue = state.queue, []
                self._commit(node, batch)
        if change.error is not None:
            raise change.error
        assert change.stored is not None
        return change.stored

    def _commit(self, node: str, batch: list[_Change]) -> None:
        errors: dict[int, BaseException] = {}
        attempts = 0

        def steps(ledger: NodeLedger) -> NodeLedger:
            nonlocal attempts
            attempts += 1
            errors.clear()
            for i, change in enumerate(batch):
                try:
                    ledger = change.step(ledger)
                except Exception as err:  # this change fails alone; the next ones see the ledger without it
                    errors[i] = err
            return ledger

        try:
            stored = self.store.update(node, steps, reuse_last=True)
        except BaseException as err:
            for change in batch:
                change.error, change.done = err, True
            raise_in_writer = not isinstance(err, Exception)
            if raise_in_writer:
                raise
            return
        finally:
            if self.metrics is not None and attempts > 1:
                self.metrics.bind_conflicts.inc(attempts - 1)
        if self.on_stored is not None:
            self.on_stored(stored)
        for i, change in enumerate(batch):
            change.error, change.stored, change.done = errors.get(i), stored, True
