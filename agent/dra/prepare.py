"""The DRA plugin's decisions: prepare a claim (check, write its CDI spec, remember it), unprepare it.

Kept apart from the gRPC services (:mod:`agent.dra.plugin`) so both kubelet API versions call one
implementation, and from the Kubernetes client: the claim is read through ``read_claim``
(``agent.kubeapi.ClaimReader`` in the agent). One lock serialises prepares, so two claims prepared
at once are checked against each other (:func:`agent.dra.claims.plan`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import cdi
from agent.dra.claims import ClaimState, PreparedClaim, claim_key, plan
from rtdra import dra, names

log = logging.getLogger("rtdra-agent.dra")

#: ``(namespace, name) -> ResourceClaim`` as the API returns it (raises on failure).
#: The claim as the API has it, ``None`` if there is none.
ReadClaim = Callable[[str, str], Mapping[str, Any] | None]


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One device of kubelet's answer (``Device`` in the kubelet DRA API)."""

    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]
    share_id: str = ""


def answer(claim: PreparedClaim) -> list[PreparedDevice]:
    """Kubelet's answer for a prepared claim: its devices, the request's CDI device on the first of each.

    Kubelet gives a container the CDI IDs of every device of the requests it uses, without removing
    duplicates, and one device per request is what carries the reservation (its hook reserves all of
    the request's CPUs): the other devices of the request carry none.
    """
    out = []
    for request in claim.requests:
        for i, d in enumerate(request.devices):
            ids = (cdi.claim_device_id(claim.uid, request.name),) if i == 0 else ()
            out.append(PreparedDevice((request.name,), d.pool, d.device, ids, d.share_id))
    return out


class Preparer:
    def __init__(
        self,
        state: ClaimState,
        read_claim: ReadClaim,
        *,
        pool: str,
        capacities: Mapping[int, int],
        cdi_dir: Path,
        hook_argv: list[str],
        release_claim: Callable[[str], object] = lambda _uid: None,
    ) -> None:
        self.state = state
        self.read_claim = read_claim
        self.pool = pool
        self.capacities = dict(capacities)
        self.cdi_dir = cdi_dir
        self.hook_argv = hook_argv
        self.release_claim = release_claim
        self.lock = threading.Lock()

    def write_spec(self, claim: PreparedClaim) -> Path:
        requests = {
            r.name: (
                claim_key(claim.uid, r.name),
                names.container_env(
                    r.reservation.runtime_ns, r.reservation.deadline_ns, r.reservation.period_ns, len(r.devices)
                ),
            )
            for r in claim.requests
        }
        return cdi.write_claim_spec(self.cdi_dir, claim.uid, cdi.claim_spec(claim.uid, requests, self.hook_argv))

    def prepare(self, namespace: str, uid: str, name: str) -> list[PreparedDevice]:
        """Prepare one claim (idempotent: a prepared one gets the same answer); :class:`rtdra.dra.ClaimError` if not."""
        where = f"ResourceClaim {namespace}/{name}"
        with self.lock:
            known = self.state.claims.get(uid)
            if known is not None:
                self.write_spec(known)  # still there (or back, had someone removed it)
                return answer(known)
            try:
                obj = self.read_claim(namespace, name)
            except Exception as err:
                raise dra.ClaimError(f"{where}: cannot read it: {err}") from None
            if obj is None:
                raise dra.ClaimError(f"{where}: not found (deleted before kubelet prepared it?)")
            found = str((obj.get("metadata") or {}).get("uid", ""))
            if found != uid:
                raise dra.ClaimError(f"{where}: its uid is {found}, not {uid} (deleted and created again?)")
            prepared = plan(obj, self.pool, self.capacities, self.state.claims)
            path = self.write_spec(prepared)
            self.state.put(prepared)  # recorded before kubelet hears "prepared"
        log.info(
            "prepared %s (uid %s): %s; CDI spec %s",
            where,
            uid,
            "; ".join(f"{r.name}: {r.reservation} on {[d.device for d in r.devices]}" for r in prepared.requests),
            path,
        )
        return answer(prepared)

    def unprepare(self, namespace: str, uid: str, name: str) -> None:
        """Release the claim: its containers' reservations, its CDI spec, its record (idempotent)."""
        with self.lock:
            gone = self.state.remove(uid)  # first: a hook arriving meanwhile finds the claim no longer prepared
            released = self.release_claim(uid)
            cdi.remove_claim_spec(self.cdi_dir, uid)
        if gone is not None:
            log.info("unprepared claim %s/%s (uid %s), released %s container(s)", namespace, name, uid, released)
