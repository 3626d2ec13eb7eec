"""Putting containers under their allocations, and taking them out again.

The :class:`Enforcer` is the agent's one place of truth about what it did:
``applied[pod_uid][container]`` records (:class:`agent.backends.Applied`),
saved to a local state file *before* the hook is answered (a crash right
after loses nothing) and published to the NAS's ``preparedClaims``. The
allocation itself is read from the ledger (the NAS the extender wrote); a
container without one is refused. Kernel refusals fail closed by default - the
hook exits non-zero, so the runtime does not start the container - or open
when configured (the container runs unreserved). Either way the refusal is
recorded (``error`` in the container's record, kept until the pod loses its
allocation or a retry succeeds) and becomes an Event on the pod, sent outside
the lock so that other containers' hooks never wait for the API.

DRA mode: a container whose hook names a claim (``<claim uid>/<request>``, from
the claim's CDI device) takes its slots from that prepared claim
(``claim_slots``, the DRA plugin's state) instead of the NAS, and keeps them while
the claim stays prepared; one claim request serves one container (a second one
would take the same booked bandwidth again).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent import oci
from agent.backends import Applied, Backend, EnforcementError, Target
from agent.events import EventSink
from agent.store import LedgerStore, write_atomically
from rtdra import tasks
from rtdra.ledger import NodeLedger, PodAllocation, Slot

log = logging.getLogger(__name__)

Records = dict[str, dict[str, Applied]]
#: A prepared DRA claim request's slots by its key (``<claim uid>/<request>``); None: not prepared here.
ClaimSlots = Callable[[str], tuple[Slot, ...] | None]


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    message: str


def _records_to_json(records: Records) -> dict[str, Any]:
    return {uid: {"containers": {c: a.to_json() for c, a in ctrs.items()}} for uid, ctrs in records.items() if ctrs}


def _records_from_json(obj: Any) -> Records:
    out: Records = {}
    for uid, entry in (obj or {}).items():
        containers = (entry or {}).get("containers") or {}
        out[str(uid)] = {str(c): Applied.from_json(str(c), a) for c, a in containers.items()}
    return out


class Enforcer:
    def __init__(
        self,
        store: LedgerStore,
        backend: Backend,
        events: EventSink,
        state_file: Path,
        *,
        fail_open: bool = False,
        publish: Callable[[], None] | None = None,
        claim_slots: ClaimSlots | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.events = events
        self.state_file = state_file
        self.fail_open = fail_open
        self.publish_hint = publish or (lambda: None)
        self.claim_slots: ClaimSlots = claim_slots or (lambda _key: None)
        self.lock = threading.RLock()
        self.ledger: NodeLedger | None = None
        #: Counts the ledger reads made under the lock (see :meth:`reconcile`).
        self.reads = 0
        self.applied: Records = {}

    # -- state ----------------------------------------------------------------

    def load(self) -> None:
        """After a (re)start: what earlier runs applied, from the state file and the NAS."""
        with self.lock:
            self.ledger = self.store.read()
            merged = _records_from_json(self.ledger.prepared if self.ledger else {})
            try:
                local = _records_from_json(json.loads(self.state_file.read_text()))
            except FileNotFoundError:
                local = {}
            for uid, ctrs in local.items():  # the local file is written first: it wins
                merged.setdefault(uid, {}).update(ctrs)
            self.applied = merged

    def save(self) -> None:
        write_atomically(self.state_file, json.dumps(_records_to_json(self.applied), sort_keys=True))
        self.publish_hint()

    def prepared_json(self) -> dict[str, Any]:
        with self.lock:
            return _records_to_json(self.applied)

    def allocation(self, uid: str) -> PodAllocation | None:
        if self.ledger is None or uid not in self.ledger.pods:
            self.ledger = self.store.read()  # a pod bound just now: read fresh once
            self.reads += 1
        return self.ledger.pods.get(uid) if self.ledger else None

    # -- the hook -------------------------------------------------------------

    def handle(self, stage: str, raw_state: bytes, *, claim: str = "") -> Outcome:
        try:
            state = oci.parse_state(raw_state)
            annotations = state.get("annotations") or {}
            if oci.is_sandbox(annotations):
                return Outcome(True, "sandbox container: nothing to do")
            if stage in ("poststop", "poststart-release"):
                ref = oci.container_ref({**state, "pid": state.get("pid") or 1})
                self.release_container(ref.pod_uid, ref.container, ref.container_id)
                return Outcome(True, f"released {ref}")
            ref = oci.container_ref(state)
        except oci.BadState as err:
            return Outcome(False, str(err))
        return self.prepare(ref, claim)

    def prepare(self, ref: oci.ContainerRef, claim: str = "") -> Outcome:
        """Put the container under its allocation (or ``claim``'s); a refusal is answered, recorded, sent."""
        started = tasks.task_start_time(ref.pid)
        if not started:
            # Nothing to put under a reservation, and nothing to record: a record would name a process
            # that never was (a garbage pid in a hook's state) or that is already gone.
            return Outcome(False, f"{ref}: process {ref.pid} does not exist (gone, or never was)")
        with self.lock:
            outcome, refusal = self._prepare(ref, started, claim)
        if refusal is not None:  # outside the lock: an Event is an API round trip
            self.events.emit(ref, refusal, outcome.message)
            log.warning("%s", outcome.message)
        return outcome

    def _slots(self, ref: oci.ContainerRef, claim: str) -> tuple[tuple[Slot, ...], str | None]:
        """The container's slots, or none and the refusal's message."""
        if claim:
            slots = self.claim_slots(claim)
            if slots is None:
                return (), f"{ref}: DRA claim {claim} is not prepared on node {self.store.node}"
            for uid, held_by in self.applied.items():
                for container, other in held_by.items():
                    if other.claim == claim and (uid, container) != (ref.pod_uid, ref.container):
                        return (), (
                            f"{ref}: DRA claim {claim} already serves container {container} of pod uid {uid}; "
                            "an RT claim request serves one container"
                        )
            return slots, None
        pod = self.allocation(ref.pod_uid)
        if pod is None:
            return (), f"{ref}: no RT-DRA allocation for pod uid {ref.pod_uid} on node {self.store.node}"
        slots = tuple(pod.containers.get(ref.container) or ())
        if not slots:
            return (), f"{ref}: the pod's allocation has no container {ref.container!r}"
        return slots, None

    def _prepare(self, ref: oci.ContainerRef, started: int, claim: str = "") -> tuple[Outcome, str | None]:
        held = self.applied.get(ref.pod_uid, {}).get(ref.container)
        if (
            held is not None
            and (held.container_id, held.pid) == (ref.container_id, ref.pid)
            and held.start_time in (0, started)
            and held.claim == claim
            and not held.error
        ):
            return Outcome(True, f"{ref}: already reserved"), None
        if held is not None:
            self.backend.release(held)
            del self.applied[ref.pod_uid][ref.container]
        slots, problem = self._slots(ref, claim)
        if problem is not None:
            return self._refused(problem), "NoAllocation"
        try:
            applied = self.backend.apply(Target(ref, slots))
        except EnforcementError as err:
            outcome = self._refused(str(err))
            # Recorded either way, so the NAS shows it (preparedClaims) until the allocation goes or a retry works.
            record = Applied(
                self.backend.name,
                ref.container,
                ref.container_id,
                ref.pid,
                slots,
                error=outcome.message,
                start_time=started,
                claim=claim,
            )
            self.applied.setdefault(ref.pod_uid, {})[ref.container] = record
            self.save()
            return outcome, err.reason
        self.applied.setdefault(ref.pod_uid, {})[ref.container] = replace(applied, start_time=started, claim=claim)
        self.save()
        cpus = ",".join(str(s.cpu) for s in slots)
        return Outcome(
            True, f"{ref}: reserved on CPU(s) {cpus} ({self.backend.name}, {len(applied.tasks)} task(s))"
        ), None

    def _refused(self, message: str) -> Outcome:
        if self.fail_open:
            return Outcome(True, message + " (fail-open: the container runs unreserved)")
        return Outcome(False, message)

    # -- release and reconcile ------------------------------------------------

    def release_container(self, uid: str, container: str, container_id: str = "") -> None:
        with self.lock:
            held = self.applied.get(uid, {}).get(container)
            if held is None or (container_id and held.container_id and held.container_id != container_id):
                return
            self.backend.release(held)
            del self.applied[uid][container]
            if not self.applied[uid]:
                del self.applied[uid]
            self.save()

    def release_claim(self, claim_uid: str) -> int:
        """Release every container held under one of ``claim_uid``'s requests (DRA unprepare); how many."""
        with self.lock:
            held = [
                (uid, container)
                for uid, held_by in self.applied.items()
                for container, record in held_by.items()
                if record.claim.partition("/")[0] == claim_uid
            ]
            for uid, container in held:
                self.release_container(uid, container)
            return len(held)

    def release_pod(self, uid: str) -> None:
        with self.lock:
            for container in list(self.applied.get(uid, {})):
                self.release_container(uid, container)

    def sync(self, running: Iterable[oci.ContainerRef], running_ids: Collection[str]) -> list[Outcome]:
        """Agree with the runtime's own list (an NRI Synchronize, after either side restarted).

        Releases what is held for containers the runtime no longer runs (``running_ids``: the ids
        of every container it runs), then puts ``running`` - its running RT containers - under
        their allocations: what is already held is kept as it is, what started while the agent
        was away is reserved now.
        """
        with self.lock:
            for uid, held_by in list(self.applied.items()):
                for container, held in list(held_by.items()):
                    if held.container_id and held.container_id not in running_ids:
                        self.release_container(uid, container, held.container_id)
        return [self.prepare(ref) for ref in running]

    def reconcile(self) -> None:
        """Release what is no longer allocated or alive; adopt tasks that appeared."""
        reads = self.reads
        ledger = self.store.read()  # outside the lock: an API round trip must not delay a hook
        with self.lock:
            if self.reads == reads:
                self.ledger = ledger
            else:  # a hook read meanwhile, perhaps a newer ledger: trust that one until next time
                ledger = self.ledger
            allocated = set(ledger.pods) if ledger else set()
            changed = False
            for uid in list(self.applied):
                for container, held in list(self.applied[uid].items()):
                    # Kept while its source holds: the pod's NAS allocation, or (DRA) its prepared claim.
                    if (self.claim_slots(held.claim) is None) if held.claim else (uid not in allocated):
                        self.release_container(uid, container)
                        continue
                    if held.error:  # a refusal: kept on record while the pod is allocated (nothing to undo)
                        continue
                    if not held.is_alive():
                        self.release_container(uid, container)
                        continue
                    adopted = self.backend.adopt(held)
                    if adopted != held:
                        self.applied[uid][container] = adopted
                        changed = True
            if changed:
                self.save()

    def release_all(self) -> None:
        with self.lock:
            for uid in list(self.applied):
                self.release_pod(uid)
