"""The ``none`` backend: accounting only - records the allocation, touches nothing."""

from __future__ import annotations

from typing import Final

from agent.backends.base import Applied, Target


class NoneBackend:
    name: Final = "none"

    def apply(self, target: Target) -> Applied:
        return Applied(self.name, target.ref.container, target.ref.container_id, target.ref.pid, target.slots)

    def adopt(self, applied: Applied) -> Applied:
        return applied

    def release(self, applied: Applied) -> None:
        return None
