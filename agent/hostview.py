"""The host's filesystem, as the agent sees it from inside its container.

The CDI hook runs on the host, so the interpreter the spec names
(``--hook-python``) must exist *there*, not in the agent's image. With
``hostPID: true`` (the DaemonSet has it) ``/proc/1/root`` is the host's root
directory; a path is looked up under it with every symlink resolved against
that root too - ``/usr/bin/python3`` is often an absolute link
(``/etc/alternatives/python3`` -> ``/usr/bin/python3.9``) that
``os.path.realpath`` would resolve inside the container instead. Run on the
host itself, ``/proc/1/root`` is just ``/``.

This only looks; it never executes anything from the host.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Final

HOST_ROOT: Final = Path("/proc/1/root")
MAX_SYMLINKS: Final = 40  # the kernel's own limit (ELOOP)


class HostPathError(RuntimeError):
    """A path the host must have is missing or unusable there; the message says what to do."""


def resolve_on_host(path: str, root: Path = HOST_ROOT) -> Path | None:
    """``path`` on the host as a path under ``root``, symlinks resolved against ``root``; ``None`` if missing.

    Raises ``PermissionError`` when ``root`` cannot be looked into (not root, no ``hostPID``).
    """
    pending = list(PurePosixPath(path).parts[1:])
    current = PurePosixPath("/")
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        try:
            info = os.lstat(root / candidate.relative_to("/"))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, f"too many symbolic links resolving {path} on the host")
            target = PurePosixPath(os.readlink(root / candidate.relative_to("/")))
            if target.is_absolute():
                current = PurePosixPath("/")
                pending = [*target.parts[1:], *pending]
            else:
                pending = [*target.parts, *pending]
        else:
            current = candidate
    return root / current.relative_to("/")


def check_host_executable(path: str, what: str, root: Path = HOST_ROOT) -> str | None:
    """Raise :class:`HostPathError` unless ``path`` is an executable file on the host.

    Returns a note (for the log) when the host cannot be looked at from here, else ``None``.
    """
    try:
        found = resolve_on_host(path, root)
        info = os.stat(found) if found is not None else None
    except PermissionError as err:
        return f"{what} {path} not checked: cannot look at the host's filesystem through {root} ({err.strerror})"
    if info is None:
        raise HostPathError(f"{what} {path} does not exist on the host (looked through {root})")
    if not stat.S_ISREG(info.st_mode) or not info.st_mode & 0o111:
        raise HostPathError(f"{what} {path} on the host is not an executable file")
    return None
