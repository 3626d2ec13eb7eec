"""The agent's CDI spec (device ``rt.resource.example.com/cpu=deadline``) and the hook it runs.

Injecting the device into a container (kubelet does it for every container
that requests ``rt.resource.example.com/dl``, from the agent's device plugin:
``agent.deviceplugin``) adds OCI hooks: at ``createRuntime`` (the container's process exists,
its program has not started: it never runs unreserved) and at ``poststop``
(release). The spec is rewritten whenever it would change, atomically (write,
then rename) so the runtime never reads half.

The runtime executes a hook's ``path`` on the **host**, in its own
namespaces - not in the agent's container. So the hook must be a file the
host can read, run by an interpreter the host has:

- :func:`install_hook` copies ``agent/hook.py`` (self-contained, CPython
  3.6+, imports only ``sys`` and ``_socket``) as ``rtdra_hook.py`` into the
  hook directory, a hostPath mounted at the same path in the agent's pod;
- :func:`hook_command` names the host's interpreter (``--hook-python``) as
  the hook's ``path`` and has it load the hook from that directory through
  the import system's source loader.

Why source and an import, not a ``.pyc`` run as a script (what the agent did
before): a ``.pyc`` only loads under the interpreter version that wrote it
(the agent image's 3.11, not the host's 3.6..3.13), and the agent cannot
write one for an interpreter it cannot run. A script given by path is
compiled on every run (~1 ms here); loaded by the import system's source
loader it is compiled once by the host's own interpreter and cached in
``<hook-dir>/__pycache__`` under its version tag, checked against the source
- right for whatever Python the host has, still right after the host
upgrades it, and as fast as the old ``.pyc`` (``bench/bench_agent.py``). The interpreter is the
``path`` (the script is an argument), so a ``noexec`` mount for the hook
directory is fine and no shebang or ``PATH`` is involved: runtimes run hooks
with only the ``env`` the spec gives (none).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Final, TypedDict

from agent.store import write_atomically
from rtdra import names

CDI_VERSION: Final = "0.6.0"  # hooks and annotations; no field newer than that
HOOK_SOURCE: Final = Path(__file__).with_name("hook.py")
#: The module name the hook is installed under (``<hook-dir>/rtdra_hook.py``).
HOOK_MODULE: Final = "rtdra_hook"
HOOK_TIMEOUT_S: Final = 10
STAGES: Final = ("createRuntime", "poststop")


class CdiHook(TypedDict, total=False):
    hookName: str
    path: str
    args: list[str]
    env: list[str]
    timeout: int


class HookDirError(RuntimeError):
    """The hook directory is unsafe or unusable; the message says why."""


def install_hook(hook_dir: Path, source: Path = HOOK_SOURCE) -> Path:
    """Install the hook as ``<hook_dir>/rtdra_hook.py``; returns that path.

    Written atomically and only when its content changed; a change also drops
    the bytecode the host cached for the old content (its stamp is the source's
    mtime in whole seconds and its size, which a same-size rewrite within a
    second would not change). The directory holds code the host runs as root
    for every real-time container: one owned by another user is refused, and
    group/other write permission is taken away.
    """
    hook_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = hook_dir.stat()
    if info.st_uid != os.geteuid():
        raise HookDirError(
            f"hook directory {hook_dir} is owned by uid {info.st_uid}, not {os.geteuid()}: "
            "the host runs its content as root for every real-time container"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        hook_dir.chmod(stat.S_IMODE(info.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
    dest = hook_dir / f"{HOOK_MODULE}.py"
    text = source.read_text()
    with contextlib.suppress(FileNotFoundError):
        if dest.read_text() == text:
            return dest
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)  # also runnable by hand: python3 <hook-dir>/rtdra_hook.py --socket ... < state.json
    os.replace(tmp, dest)
    for cached in (hook_dir / "__pycache__").glob(f"{HOOK_MODULE}.*.pyc"):
        with contextlib.suppress(FileNotFoundError):
            cached.unlink()
    return dest


#: Runs the installed hook as ``__main__`` from the bytecode the host's interpreter caches for it.
#: ``SourceFileLoader`` is the class behind ``importlib.machinery.SourceFileLoader``; taken from the
#: frozen module CPython has already loaded at start-up it costs nothing, while importing
#: ``importlib.machinery`` costs ~0.8 ms and a ``sys.path`` import ~0.2 ms (the fallback keeps other
#: layouts working).
LOADER: Final = """\
try:
    from _frozen_importlib_external import SourceFileLoader
except ImportError:
    from importlib.machinery import SourceFileLoader
exec(SourceFileLoader({name!r}, {path!r}).get_code({name!r}), {{"__name__": "__main__"}})
"""


def hook_command(
    socket_path: Path, *, hook_dir: Path, python: str = sys.executable, fail_open: bool = False
) -> list[str]:
    """The hook's argv: the host's ``python -S -I`` (no site-packages, no ``PYTHON*``) running the installed hook."""
    loader = LOADER.format(name=HOOK_MODULE, path=str(hook_dir / f"{HOOK_MODULE}.py"))
    argv = [python, "-S", "-I", "-c", loader, "--socket", str(socket_path)]
    return argv + (["--fail-open"] if fail_open else [])


def _hooks(hook_argv: list[str], *args: str) -> list[CdiHook]:
    """A hook per stage running ``hook_argv`` (``argv[0]`` is the ``path``) plus ``--stage <stage>`` and ``args``."""
    return [
        {
            "hookName": stage,
            "path": hook_argv[0],
            "args": [*hook_argv, "--stage", stage, *args],
            "timeout": HOOK_TIMEOUT_S,
        }
        for stage in STAGES
    ]


def _spec(annotation: str, value: str, devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cdiVersion": CDI_VERSION,
        "kind": names.CDI_KIND,
        "annotations": {f"{names.DOMAIN}/{annotation}": value},
        "devices": devices,
    }


def _spec_path(cdi_dir: Path, name: str) -> Path:
    vendor, cls = names.CDI_KIND.split("/")
    return cdi_dir / f"{vendor}-{cls}-{name}.json"


def _write(path: Path, body: dict[str, Any]) -> Path:
    """Write ``body`` to ``path`` if it differs from what is there (atomically: the runtime never reads half)."""
    text = json.dumps(body, indent=2, sort_keys=True) + "\n"
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return path
    write_atomically(path, text)
    path.chmod(0o644)
    return path


def spec(node: str, hook_argv: list[str]) -> dict[str, Any]:
    """The node's CDI spec: device ``deadline``, whose hooks run ``hook_argv`` plus ``--stage <stage>``."""
    return _spec("node", node, [{"name": names.CDI_DEVICE, "containerEdits": {"hooks": _hooks(hook_argv)}}])


def spec_path(cdi_dir: Path, node: str) -> Path:
    return _spec_path(cdi_dir, node)


def write_spec(cdi_dir: Path, node: str, body: dict[str, Any]) -> Path:
    """Write the spec if it differs from what is there; returns its path."""
    return _write(spec_path(cdi_dir, node), body)


# -- DRA mode: one spec per prepared claim ---------------------------------------------


def claim_device_name(claim_uid: str, request: str) -> str:
    """The CDI device of one request of one claim.

    CDI names allow ``[A-Za-z0-9_.:-]``: a subrequest's ``/`` becomes a ``.``.
    """
    return f"claim-{claim_uid}-{request.replace('/', '.')}"


def claim_device_id(claim_uid: str, request: str) -> str:
    """The qualified CDI name kubelet hands the runtime (``rt.resource.example.com/cpu=claim-<uid>-<request>``)."""
    return f"{names.CDI_KIND}={claim_device_name(claim_uid, request)}"


def claim_spec(claim_uid: str, requests: dict[str, tuple[str, dict[str, str]]], hook_argv: list[str]) -> dict[str, Any]:
    """The spec of one prepared claim: per request (name -> (claim key, env)) a device whose hooks name the claim.

    The hooks are the node spec's (:func:`spec`) plus ``--claim <key>``, so the agent knows, for the
    container being started, which claim's CPUs and timing apply; the env is the container's RT_*.
    """
    devices = [
        {
            "name": claim_device_name(claim_uid, request),
            "containerEdits": {
                "env": [f"{k}={v}" for k, v in sorted(env.items())],
                "hooks": _hooks(hook_argv, "--claim", key),
            },
        }
        for request, (key, env) in sorted(requests.items())
    ]
    return _spec("claim", claim_uid, devices)


def claim_spec_path(cdi_dir: Path, claim_uid: str) -> Path:
    return _spec_path(cdi_dir, f"claim-{claim_uid}")


def write_claim_spec(cdi_dir: Path, claim_uid: str, body: dict[str, Any]) -> Path:
    """Write (atomically, if changed) the claim's spec; returns its path."""
    return _write(claim_spec_path(cdi_dir, claim_uid), body)


def remove_claim_spec(cdi_dir: Path, claim_uid: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        claim_spec_path(cdi_dir, claim_uid).unlink()
