"""Enforcement backends: how a container's allocation becomes the kernel's.

- ``deadline`` (stock kernels): SCHED_DEADLINE on the container's tasks.
- ``hcbs`` (kernels with the hierarchical CBS patch): per-CPU RT runtime on the
  container's cgroup.
- ``none``: accounting only (simulated nodes, dry runs).

Each backend turns a :class:`Target` into an :class:`Applied` record (kept in
the NAS's ``preparedClaims`` and the agent's state file) and can undo exactly
what a record says, so a restarted agent releases what an earlier one applied.
"""

from __future__ import annotations

from agent.backends.base import Applied, Backend, EnforcementError, Target, TaskRecord

__all__ = ["Applied", "Backend", "EnforcementError", "Target", "TaskRecord"]
