"""Fixture bodies the whole-stack e2e modules share (``test_chain``, ``test_real_node``).

Generators for ``yield from`` in a module's own fixtures: a stack on a fresh
control plane that checks no process it started survives it, and an opted-in
namespace whose pods are all gone before it is deleted.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from hack.procs import pid_alive
from hack.stack import NodeSpec, Stack, running_stack, wait_for
from rtdra import names


def module_stack(k8s_binaries: Any, nodes: Sequence[NodeSpec], prefix: str, **stack_args: Any) -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    with running_stack(workdir / "cp", nodes, binaries=k8s_binaries, **stack_args) as s:
        yield s
    with contextlib.suppress(OSError):
        workdir.rmdir()
    left = {n: p for n, p in s.pids.items() if pid_alive(p)}
    assert not left, f"processes survived teardown: {left}"


def opted_in_namespace(stack: Stack, name: str, drain_timeout: float = 90) -> Iterator[str]:
    core = client.CoreV1Api(stack.api)
    core.create_namespace({"metadata": {"name": name, "labels": {names.NAMESPACE_OPT_IN_LABEL: "true"}}})
    yield name
    for pod in core.list_namespaced_pod(name).items:
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(pod.metadata.name, name)
    wait_for(f"pods of {name} gone", lambda: not core.list_namespaced_pod(name).items, timeout=drain_timeout)
    core.delete_namespace(name)
