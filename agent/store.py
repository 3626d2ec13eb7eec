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
from typing import Final, Protocol

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


#: How many times :meth:`FileStore.update` decides again after the file was replaced under it.
MAX_ATTEMPTS: Final = 16

#: What identifies one version of the file: a replacement (``os.replace``) changes the inode or its ctime.
Identity = tuple[int, int, int, int]


class FileConflict(RuntimeError):
    """Every attempt of :meth:`FileStore.update` met a concurrent replacement of the file."""


class FileStore:
    """A NAS object kept in a JSON file: compare-and-swap on the file's identity, under a lock.

    Writers that follow the protocol take the lock file (``.<name>.lock``)
    for their read-modify-write. A writer that does not - another program
    replacing the file with ``os.replace``, as a test standing in for the
    extender does - must still never be undone: the agent publishes its
    fields by reading the whole object and writing it back, so a replacement
    landing between that read and write used to be overwritten with the
    allocations as read (a deleted pod's allocation came back, and the agent
    kept its reservation for good). :meth:`update` therefore writes only if
    the file is still the version it read, and otherwise decides again on the
    new one, like ``rtdra.store.NasStore.update`` does with resourceVersions.
    """

    def __init__(self, node: str, path: Path, namespace: str = names.DEFAULT_NAMESPACE) -> None:
        self.node = node
        self.path = path
        self.namespace = namespace

    def read(self) -> NodeLedger | None:
        return self._read()[1]

    def _read(self) -> tuple[Identity | None, NodeLedger | None]:
        try:
            with open(self.path, "rb") as f:
                identity = _identity(os.fstat(f.fileno()))
                return identity, NodeLedger.from_nas(json.loads(f.read()))
        except FileNotFoundError:
            return None, None

    def _current(self) -> Identity | None:
        try:
            return _identity(os.stat(self.path))
        except FileNotFoundError:
            return None

    def update(self, change: Update) -> NodeLedger:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for _ in range(MAX_ATTEMPTS):
                seen, current = self._read()
                ledger = change(current)
                if self._current() != seen:
                    continue  # replaced meanwhile without the lock: decide again on what is there now
                write_atomically(self.path, json.dumps(ledger.to_nas(self.namespace), indent=1, sort_keys=True))
                return ledger
        raise FileConflict(f"{self.path}: replaced {MAX_ATTEMPTS} times while being updated; try again")


def _identity(st: os.stat_result) -> Identity:
    return (st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size)
