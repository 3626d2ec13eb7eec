"""Kubernetes Events on the pod, so a refusal is visible in ``kubectl describe pod``.

The sink the enforcer reports to; :class:`LogEvents` only logs (agents without
a control plane), ``agent.kubeapi.ApiEvents`` creates the Events.
"""

from __future__ import annotations

import logging
from typing import Protocol

from agent.oci import ContainerRef

log = logging.getLogger(__name__)


class EventSink(Protocol):
    def emit(self, ref: ContainerRef, reason: str, message: str, type_: str = "Warning") -> None: ...


class LogEvents:
    def emit(self, ref: ContainerRef, reason: str, message: str, type_: str = "Warning") -> None:
        log.log(logging.WARNING if type_ == "Warning" else logging.INFO, "%s %s: %s", reason, ref, message)
