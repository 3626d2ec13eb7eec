"""The agent's edge to the Kubernetes API: its NAS through ``rtdra.store``, its Lease, and Events on pods.

Kept apart from :mod:`agent.store` and :mod:`agent.events` so that only an
agent whose ledger lives in the API imports the Kubernetes client
(:mod:`agent.cli` imports this module on demand).

:class:`ApiStore` adds nothing to :class:`rtdra.store.NasStore`'s
compare-and-swap loop - the one place that writes NAS objects - except what
the agent needs on a fresh node: when its NAS does not exist yet, the agent
creates it (a concurrent create makes it update the one that won).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from kubernetes import client

from agent.events import LogEvents
from agent.oci import ContainerRef
from agent.store import Update
from rtdra.kube import api_client, read_object
from rtdra.leases import LeaseRenewer
from rtdra.ledger import NodeLedger
from rtdra.store import AlreadyExists, NasStore, NotFound, TooManyConflicts

__all__ = ["ApiEvents", "ApiStore", "ClaimReader", "LeaseRenewer", "NasStore", "api_client"]

log = logging.getLogger(__name__)


class ApiStore:
    """One node's NAS in the API, for :class:`agent.store.LedgerStore` users."""

    def __init__(self, node: str, nas: NasStore) -> None:
        self.node = node
        self.nas = nas

    def read(self) -> NodeLedger | None:
        return self.nas.get(self.node)

    def update(self, change: Update) -> NodeLedger:
        for _ in range(self.nas.max_attempts):
            try:
                return self.nas.update(self.node, change)
            except NotFound:
                pass
            try:
                return self.nas.create(change(None))
            except AlreadyExists:
                continue  # created meanwhile (by the extender or a previous agent): update it
        raise TooManyConflicts(f"NodeAllocationState {self.nas.namespace}/{self.node}: created and deleted meanwhile")


class ApiEvents:
    """Warning Events on the pod (``kubectl describe pod``), best effort: the hook's status and the NAS remain."""

    def __init__(self, api: client.ApiClient, node: str) -> None:
        self.api = client.CoreV1Api(api)
        self.node = node

    def emit(self, ref: ContainerRef, reason: str, message: str, type_: str = "Warning") -> None:
        now = dt.datetime.now(dt.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{ref.pod_name}.", namespace=ref.namespace),
            involved_object=client.V1ObjectReference(
                kind="Pod",
                api_version="v1",
                namespace=ref.namespace,
                name=ref.pod_name,
                uid=ref.pod_uid,
                field_path=f"spec.containers{{{ref.container}}}",
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            source=client.V1EventSource(component="rtdra-agent", host=self.node),
            reporting_component="rtdra-agent",
            reporting_instance=self.node,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self.api.create_namespaced_event(ref.namespace, body)
        except Exception as err:  # an event is best effort
            log.warning("could not create event %s on %s: %s", reason, ref, err)
        LogEvents().emit(ref, reason, message, type_)


class ClaimReader:
    """Reads ResourceClaims (``resource.k8s.io/v1``) for the DRA plugin, as plain JSON objects.

    ``None`` when the claim does not exist; any other failure is :func:`rtdra.kube.api_error`'s
    one-line :class:`StoreError` (it reaches kubelet, and the pod's events, as the claim's error).
    """

    def __init__(self, api: client.ApiClient, request_timeout: float = 10.0) -> None:
        self.resource = client.ResourceV1Api(api)
        self.request_timeout = request_timeout

    def __call__(self, namespace: str, name: str) -> dict[str, Any] | None:
        return read_object(self.resource.read_namespaced_resource_claim, namespace, name, self.request_timeout)
