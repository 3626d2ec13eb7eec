"""The agent's loop: keep the NAS, the CDI spec and the kernel in step.

Every interval: re-read the ledger, release pods that lost their allocation
and containers whose process is gone, bring new tasks of reserved containers
under their free slots, and publish capacity, readiness and the prepared
records (only when they changed). The same loop renews the agent's Lease
(``rtdra.leases``) every ``heartbeat_interval_s``, so the heartbeat the
extender trusts stops when the loop does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from agent.discovery import NodeFacts
from agent.enforce import Enforcer
from agent.store import LedgerStore
from rtdra.ledger import NodeLedger

log = logging.getLogger(__name__)

#: How long a publish waits after the Enforcer's hint (see :meth:`Loop.run`).
DIRTY_DELAY_S = 0.02


def publish(store: LedgerStore, facts: NodeFacts, enforcer: Enforcer, *, ready: bool, reason: str = "") -> NodeLedger:
    """Write the agent's fields of the NAS (capacity, readiness, preparedClaims), keeping the extender's."""
    prepared = enforcer.prepared_json()

    def change(current: NodeLedger | None) -> NodeLedger:
        base = current or NodeLedger(node=store.node, capacities={})
        return replace(
            base,
            node=store.node,
            capacities=dict(facts.capacities),
            root_domain_capacity=facts.root_domain_capacity,
            ready=ready,
            reason="" if ready else reason,
            prepared=prepared,
        )

    return store.update(change)


class Loop:
    def __init__(
        self,
        store: LedgerStore,
        facts: NodeFacts,
        enforcer: Enforcer,
        interval_s: float,
        ready: Callable[[], bool] = lambda: True,
        *,
        heartbeat: Callable[[], None] | None = None,
        heartbeat_interval_s: float = 10.0,
        not_ready_reason: str = "",
        also: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.facts = facts
        self.enforcer = enforcer
        self.interval_s = interval_s
        #: Whether the node can take RT containers now (e.g. kubelet has registered the agent's device plugin:
        #: before that kubelet would start an RT container without the CDI device, so without its reservation).
        self.ready = ready
        #: Published with NotReady (``statusReason``), e.g. "node serves RT pods through DRA (...)".
        self.not_ready_reason = not_ready_reason
        #: Run every step after the ledger (DRA mode: keep the ResourceSlices in step).
        self.also = also
        self.stopping = threading.Event()
        self.dirty = threading.Event()
        self.published: dict[str, object] | None = None
        #: Renews the agent's Lease (``None``: no API, e.g. a ``--nas-file`` agent).
        self.heartbeat = heartbeat
        self.heartbeat_interval_s = heartbeat_interval_s
        self._next_heartbeat = 0.0

    def mark_dirty(self) -> None:
        self.dirty.set()

    def step(self) -> None:
        self.enforcer.reconcile()
        current = self.enforcer.prepared_json()
        ledger = self.enforcer.ledger
        ready = self.ready()
        if (
            current != self.published
            or ledger is None
            or ledger.ready != ready
            or (not ready and ledger.reason != self.not_ready_reason)
            or self.dirty.is_set()
        ):
            self.dirty.clear()
            publish(self.store, self.facts, self.enforcer, ready=ready, reason=self.not_ready_reason)
            self.published = current
        if self.also is not None:
            self.also()

    def beat(self) -> None:
        """Renew the Lease if it is due; a failure is logged and retried on the next round."""
        if self.heartbeat is None or time.monotonic() < self._next_heartbeat:
            return
        try:
            self.heartbeat()
        except Exception as err:  # the API may be away for a while; the extender sees the silence
            log.warning("renewing the agent's Lease failed: %s", err)
            return
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval_s

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception:
                log.exception("reconcile step failed")
            self.beat()
            if self.dirty.wait(self.interval_s):
                # A hint comes from a request still being answered: let the answer go out first
                # (on a busy machine, this thread taking the GIL can delay it by milliseconds).
                self.stopping.wait(DIRTY_DELAY_S)
