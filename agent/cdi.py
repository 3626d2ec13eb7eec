"""The agent's CDI spec: device ``rt.resource.example.com/cpu=deadline``.

Injecting the device into a container (via the NRI device injector or a DRA
driver) adds OCI hooks that run ``rtdra-hook``: at ``createRuntime`` (the
container's process exists, its program has not started: it never runs
unreserved) and at ``poststop`` (release). The spec is rewritten whenever it
would change, atomically (write, then rename) so the runtime never reads half.

The hook runs as a byte-compiled copy (:func:`compile_hook`): Python does not
cache the compiled form of a script it is given by path, and compiling
``hook.py`` on every container start costs about 1 ms here.
"""

from __future__ import annotations

import json
import os
import py_compile
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TypedDict

from agent.store import write_atomically
from rtdra import names

CDI_VERSION: Final = "0.6.0"  # hooks and annotations; no field newer than that
HOOK_SCRIPT: Final = Path(__file__).with_name("hook.py")


class CdiHook(TypedDict, total=False):
    hookName: str
    path: str
    args: list[str]
    env: list[str]
    timeout: int


def compile_hook(dest: Path, source: Path = HOOK_SCRIPT) -> Path:
    """Byte-compile the hook to ``dest`` (atomically) for ``python -S -I dest``; returns ``dest``.

    A ``.pyc`` run as a script is not checked against its source, so the agent
    rewrites it at every start; it only runs under this interpreter (same magic number).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    py_compile.compile(str(source), cfile=str(tmp), dfile=str(source), doraise=True)
    tmp.chmod(0o644)
    os.replace(tmp, dest)
    return dest


def hook_command(
    socket_path: Path, *, fail_open: bool = False, python: str = sys.executable, script: Path = HOOK_SCRIPT
) -> list[str]:
    """The hook's argv: the lean entry (``python -S -I <script>``), no site-packages imported."""
    argv = [python, "-S", "-I", str(script), "--socket", str(socket_path)]
    return argv + (["--fail-open"] if fail_open else [])


def spec(
    node: str, socket_path: Path, *, fail_open: bool = False, hook_argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """The CDI spec; ``hook_argv`` defaults to :func:`hook_command` on the hook's source."""
    argv = list(hook_argv or hook_command(socket_path, fail_open=fail_open))
    hooks: list[CdiHook] = [
        {"hookName": stage, "path": argv[0], "args": [*argv, "--stage", stage], "timeout": 10}
        for stage in ("createRuntime", "poststop")
    ]
    return {
        "cdiVersion": CDI_VERSION,
        "kind": names.CDI_KIND,
        "annotations": {f"{names.DOMAIN}/node": node},
        "devices": [{"name": names.CDI_DEVICE, "containerEdits": {"hooks": hooks}}],
    }


def spec_path(cdi_dir: Path, node: str) -> Path:
    vendor, cls = names.CDI_KIND.split("/")
    return cdi_dir / f"{vendor}-{cls}-{node}.json"


def write_spec(cdi_dir: Path, node: str, body: dict[str, Any]) -> Path:
    """Write the spec if it differs from what is there; returns its path."""
    path = spec_path(cdi_dir, node)
    text = json.dumps(body, indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return path
    except FileNotFoundError:
        pass
    write_atomically(path, text)
    path.chmod(0o644)
    return path
