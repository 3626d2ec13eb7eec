"""Where the node's ledger (its NodeAllocationState) lives, with compare-and-swap.

Two stores with one interface: ``agent.kubeapi.ApiStore`` (the NAS object in
the Kubernetes API, through ``rtdra.store.NasStore``'s compare-and-swap loop)
and :class:`FileStore` (the same object as a JSON file, flock-serialised, for
agents without a control plane - tests, simulated nodes, the benchmark).
The agent owns the capacity, readiness and ``preparedClaims``; the extender
owns ``allocatedClaims``. Updates therefore always re-read and change only
the agent's fields.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from rtdra import names
from rtdra.ledger import NodeLedger

Update = Callable[[NodeLedger | None], NodeLedger]


class LedgerStore(Protocol):
    node: str

    def read(self) -> NodeLedger | None: ...

    def update(self, change: Update) -> NodeLedger: ...


def write_atomically(path: Path, data: str) -> None:
    """Write then rename: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


class FileStore:
    """A NAS object kept in a JSON file (flock-serialised read-modify-write)."""

    def __init__(self, node: str, path: Path, namespace: str = names.DEFAULT_NAMESPACE) -> None:
        self.node = node
        self.path = path
        self.namespace = namespace

    def read(self) -> NodeLedger | None:
        try:
            return NodeLedger.from_nas(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def update(self, change: Update) -> NodeLedger:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ledger = change(self.read())
            write_atomically(self.path, json.dumps(ledger.to_nas(self.namespace), indent=1, sort_keys=True))
            return ledger
