"""Prepared DRA claims: what kubelet asked the node to prepare, checked against the kernel's capacity.

``NodePrepareResources`` hands the plugin claims by ``{namespace, uid, name}``; the plugin reads
each ResourceClaim and :func:`plan` turns its allocation into a :class:`PreparedClaim`: for every
request the CPUs the allocator gave (``cpu-<n>`` devices of this node's pool), the bandwidth it
booked on each (``consumedCapacity``) and the reservation its ``RtClaimParameters`` ask for.
Before anything is promised the plan is re-checked here - the booked bandwidth must cover the
reservation, and the claims prepared on a CPU must not book more than its measured capacity -
because the scheduler's allocator is not the last word: KEP-4381 asks the kubelet plugin to
re-check (upstream had a double-allocation race under bursts).

:class:`ClaimState` keeps the prepared claims in a JSON file in the agent's state directory,
written before kubelet gets its answer, so they survive an agent restart. A container's hook then
finds its slots here by the key its CDI device carries (:func:`claim_key`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.store import write_atomically
from rtdra import dra
from rtdra.bandwidth import percent
from rtdra.ledger import Slot
from rtdra.placement import slot_of
from rtdra.request import Reservation


def claim_key(uid: str, request: str) -> str:
    """How a hook names one request of one claim (``<claim uid>/<request>``)."""
    return f"{uid}/{request}"


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """One request of a prepared claim: its devices (in allocation order) and their reservation."""

    name: str
    reservation: Reservation
    devices: tuple[dra.AllocatedDevice, ...]

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(slot_of(self.reservation, d.cpu) for d in self.devices)


@dataclass(frozen=True, slots=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    requests: tuple[PreparedRequest, ...]

    @property
    def devices(self) -> tuple[dra.AllocatedDevice, ...]:
        return tuple(d for r in self.requests for d in r.devices)

    def consumed_on(self, cpu: int) -> int:
        return sum(d.consumed for d in self.devices if d.cpu == cpu)

    def request(self, name: str) -> PreparedRequest | None:
        return next((r for r in self.requests if r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "requests": [
                {
                    "name": r.name,
                    "reservation": r.reservation.to_json(),
                    "devices": [
                        {"pool": d.pool, "device": d.device, "consumed": d.consumed, "shareID": d.share_id}
                        for d in r.devices
                    ],
                }
                for r in self.requests
            ],
        }

    @classmethod
    def from_json(cls, uid: str, obj: Mapping[str, Any]) -> PreparedClaim:
        requests = []
        for r in obj.get("requests") or []:
            reservation = Reservation.from_json(r["reservation"])
            devices = tuple(
                dra.AllocatedDevice(
                    str(r["name"]),
                    str(d["pool"]),
                    str(d["device"]),
                    dra.cpu_of_device(str(d["device"])),
                    int(d["consumed"]),
                    str(d.get("shareID") or ""),
                )
                for d in r.get("devices") or []
            )
            requests.append(PreparedRequest(str(r["name"]), reservation, devices))
        return cls(uid, str(obj.get("namespace", "")), str(obj.get("name", "")), tuple(requests))


def plan(
    claim: Mapping[str, Any],
    pool: str,
    capacities: Mapping[int, int],
    prepared: Mapping[str, PreparedClaim],
) -> PreparedClaim:
    """What preparing ``claim`` on this node means; :class:`rtdra.dra.ClaimError` if it must not be.

    ``capacities``: each RT CPU's measured capacity (kernel fixed point); ``prepared``: the claims
    already prepared here by uid (a claim's own earlier entry is not counted against it).
    """
    metadata = claim.get("metadata") or {}
    uid, namespace, name = str(metadata.get("uid", "")), str(metadata.get("namespace", "")), str(metadata.get("name"))
    where = f"ResourceClaim {namespace}/{name}"
    devices = dra.allocated_devices(claim, pool)
    if not devices:
        raise dra.ClaimError(f"{where}: no device of driver {dra.DRIVER} is allocated to it")
    by_request: dict[str, list[dra.AllocatedDevice]] = {}
    for d in devices:
        by_request.setdefault(d.request, []).append(d)
    requests = []
    for request, its_devices in by_request.items():
        at = f"{where} request {request}"
        reservation = dra.reservation_from_parameters(dra.request_parameters(claim, request), at)
        need = dra.capacity_request(reservation)
        for d in its_devices:
            if d.cpu not in capacities:
                raise dra.ClaimError(f"{at}: {d.device} is not one of this node's RT CPUs")
            consumed = capacities[d.cpu] if d.consumed < 0 else d.consumed
            if consumed < need:
                raise dra.ClaimError(
                    f"{at}: {d.device} has {consumed} ({percent(consumed)} of a CPU) of {dra.CAPACITY} booked, "
                    f"but {reservation} needs {need} ({percent(need)}): "
                    "the claim's capacity request must be at least that"
                )
        requests.append(
            PreparedRequest(
                request,
                reservation,
                tuple(d if d.consumed >= 0 else replace(d, consumed=capacities[d.cpu]) for d in its_devices),
            )
        )
    result = PreparedClaim(uid, namespace, name, tuple(requests))
    for cpu in sorted({d.cpu for d in result.devices}):
        others = sum(p.consumed_on(cpu) for other, p in prepared.items() if other != uid)
        mine = result.consumed_on(cpu)
        if others + mine > capacities[cpu]:
            raise dra.ClaimError(
                f"{where}: CPU {cpu} has {capacities[cpu]} ({percent(capacities[cpu])}) of deadline bandwidth; "
                f"claims prepared here already book {others} and this one books {mine}: it does not fit "
                "(allocated twice by the scheduler?) - delete the pod to have it allocated again"
            )
    return result


@dataclass
class ClaimState:
    """The prepared claims by uid, persisted as JSON in ``path`` (written before each answer)."""

    path: Path
    claims: dict[str, PreparedClaim] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def load(self) -> None:
        with self.lock:
            try:
                obj = json.loads(self.path.read_text())
            except FileNotFoundError:
                obj = {}
            self.claims = {uid: PreparedClaim.from_json(uid, c) for uid, c in (obj.get("claims") or {}).items()}

    def save(self) -> None:
        body = {"claims": {uid: c.to_json() for uid, c in sorted(self.claims.items())}}
        write_atomically(self.path, json.dumps(body, indent=1, sort_keys=True))

    def put(self, claim: PreparedClaim) -> None:
        with self.lock:
            self.claims[claim.uid] = claim
            self.save()

    def remove(self, uid: str) -> PreparedClaim | None:
        with self.lock:
            gone = self.claims.pop(uid, None)
            if gone is not None:
                self.save()
            return gone

    def slots(self, key: str) -> tuple[Slot, ...] | None:
        """The slots of the claim request ``key`` (:func:`claim_key`), if it is prepared here."""
        uid, _, request = key.partition("/")
        with self.lock:
            claim = self.claims.get(uid)
            found = claim.request(request) if claim is not None else None
            return found.slots if found is not None else None

    def __iter__(self) -> Iterator[PreparedClaim]:
        with self.lock:
            return iter(list(self.claims.values()))
