"""The demo's report reads the records the agent really publishes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from agent.backends import Applied
from rtdra.ledger import Slot

REPO = Path(__file__).resolve().parents[2]


def demo_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_run", REPO / "demo" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_kernel_refusal_recorded_by_the_agent_is_reported_as_refused() -> None:
    demo = demo_run()
    refused = Applied(
        "deadline", "dsp", "ctr-1", 42, (Slot(0, 6_000_000, 10_000_000, 10_000_000),), error="sched_setattr: EBUSY"
    )
    nas: dict[str, Any] = {"spec": {"preparedClaims": {"uid-1": {"containers": {"dsp": refused.to_json()}}}}}
    stack = SimpleNamespace(nas=lambda node: nas)
    node = demo.NodeSpec("rt-node-0", backend="deadline")
    pod = SimpleNamespace(metadata=SimpleNamespace(uid="uid-1"))
    assert demo.kernel_state(stack, node, pod, "dsp") == "REFUSED: sched_setattr: EBUSY"
