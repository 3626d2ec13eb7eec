"""What the test harness changes on the host, written down first and undone for sure.

A real node (kubelet, containerd) changes the machine it runs on: kubelet
sets six sysctls (``vm.overcommit_memory``, ``vm.panic_on_oom``,
``kernel.panic``, ``kernel.panic_on_oops``, ``kernel.keys.root_maxkeys``,
``kernel.keys.root_maxbytes`` - ``setupKernelTunables`` in kubelet's container
manager), creates fixed directories (``/var/lib/kubelet/device-plugins``,
``/var/log/containers``), cgroups under its ``cgroupRoot`` in every hierarchy,
and mounts (its root directory bind-mounted onto itself, overlay and shm
mounts, network namespaces). Tests must leave the machine as they found it.

:class:`HostChanges` records each change in a JSON file under
``/run/rt-dra-node/host/`` *before* making it (or before starting the program that
makes it), tagged with the owning process id. :meth:`HostChanges.undo`
restores everything in reverse order. If the owner crashed (SIGKILL, power
cut of the test run), the next :meth:`HostChanges.open` finds the record of a
dead owner and undoes it first - so a crashed run is cleaned up by the next.

Only the standard library.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hack.procs import pid_alive

log = logging.getLogger(__name__)

#: One JSON record per owner (``hack/runtime.py`` keeps containerd's records one level up).
RECORD_DIR = Path(os.environ.get("RTDRA_NODE_RECORDS", "/run/rt-dra-node")) / "host"
MNT_DETACH = 2


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str:
    return _sysctl_path(name).read_text().strip()


def proc_start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, a unique identity."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _unescape_mount_path(p: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo
    return p.encode().decode("unicode_escape")


def mounts_under(dirs: Iterable[Path]) -> list[str]:
    """Mount points at or below any of ``dirs``, deepest first."""
    roots = [str(d) for d in dirs]
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape_mount_path(line.split()[4])
            if any(mp == r or mp.startswith(r.rstrip("/") + "/") for r in roots):
                found.append(mp)
    return sorted(set(found), key=lambda m: (-m.count("/"), m))


def unmount_all(dirs: Sequence[Path]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(10):  # stacked mounts need more than one pass
        mps = mounts_under(dirs)
        if not mps:
            return
        for mp in mps:
            libc.umount2(mp.encode(), MNT_DETACH)


def cgroup_mounts() -> list[Path]:
    """Every cgroup (v1) and cgroup2 mount point of this host."""
    out: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if right.split()[0] in ("cgroup", "cgroup2"):
                out.append(Path(_unescape_mount_path(left.split()[4])))
    return out


def cgroup_dirs(rel: str) -> list[Path]:
    """``rel`` (an absolute cgroup path) in every hierarchy where it exists, children first."""
    found: list[Path] = []
    for mount in cgroup_mounts():
        top = mount / rel.lstrip("/")
        if top.is_dir():
            found += sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            found.append(top)
    return found


def kill_cgroup(rel: str) -> None:
    """SIGKILL every process in cgroup ``rel`` and below, then remove the cgroups."""
    for _ in range(50):
        pids: set[int] = set()
        for d in cgroup_dirs(rel):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for d in cgroup_dirs(rel):
            with contextlib.suppress(OSError):
                d.rmdir()
        if not cgroup_dirs(rel):
            return
        time.sleep(0.1)


class HostChanges:
    """An undo log of host changes, persisted so a crashed owner's changes are undone by the next run."""

    def __init__(self, name: str, record_dir: Path = RECORD_DIR) -> None:
        self.name = name
        self.path = record_dir / f"{name}.json"
        self.entries: list[dict[str, Any]] = []

    @classmethod
    def open(cls, name: str, record_dir: Path = RECORD_DIR) -> HostChanges:
        """Undo what dead owners left in ``record_dir`` (any name), then start a fresh record for ``name``."""
        recover_stale(record_dir)
        changes = cls(name, record_dir)
        if changes.path.exists():
            raise RuntimeError(f"{changes.path} belongs to a live process: another node harness runs on this host")
        changes._save()
        return changes

    # -- recording ------------------------------------------------------------------

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        owner = {"owner": os.getpid(), "owner_start": proc_start_time(os.getpid())}
        tmp.write_text(json.dumps({**owner, "entries": self.entries}, indent=1))
        os.replace(tmp, self.path)

    def _add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self._save()

    def sysctl_will_change(self, name: str) -> None:
        """Record the current value of ``name`` (a program is about to change it)."""
        if not any(e.get("sysctl") == name for e in self.entries):
            self._add({"sysctl": name, "value": read_sysctl(name)})

    def set_sysctl(self, name: str, value: str) -> None:
        self.sysctl_will_change(name)
        _sysctl_path(name).write_text(value)

    def directory(self, path: Path) -> Path:
        """Create ``path`` (and parents) if missing; the ones created here are removed on undo."""
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            self._add({"dir": str(d)})
            d.mkdir(exist_ok=True)
        return path

    def files_appearing_in(self, directory: Path) -> None:
        """Remove, on undo, the entries a program adds to an existing ``directory`` (e.g. /var/log/containers)."""
        present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        self._add({"new_entries_in": str(directory), "present": present})

    def mounts_under(self, prefix: Path) -> None:
        """Unmount, on undo, whatever gets mounted at or below ``prefix``."""
        self._add({"mounts_under": str(prefix)})

    def cgroup(self, relative: str) -> list[Path]:
        """Create ``relative`` in every hierarchy (cpuset values copied from the parent); removed on undo."""
        self._add({"cgroup": relative})
        made = []
        for mount in cgroup_mounts():
            d = mount / relative.strip("/")
            d.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                mine, parents = d / knob, d.parent / knob
                if mine.exists() and not mine.read_text().strip():
                    mine.write_text(parents.read_text().strip())
            made.append(d)
        return made

    def processes_matching(self, needle: str) -> None:
        """Kill, on undo, every process whose command line contains ``needle`` (e.g. a work directory)."""
        self._add({"processes": needle})

    # -- undoing ----------------------------------------------------------------------

    def undo(self) -> None:
        undo_entries(self.entries)
        self.entries = []
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def undo_entries(entries: list[dict[str, Any]]) -> None:
    """Undo recorded changes, newest first; each step is attempted even if an earlier one failed."""
    from hack.procs import kill, pids_matching  # noqa: PLC0415

    for entry in reversed(entries):
        try:
            if "processes" in entry:
                for pid in pids_matching(entry["processes"]):
                    kill(pid, None, grace=5)
            elif "mounts_under" in entry:
                unmount_all([Path(entry["mounts_under"])])
            elif "cgroup" in entry:
                kill_cgroup(entry["cgroup"])
            elif "new_entries_in" in entry:
                directory, present = Path(entry["new_entries_in"]), set(entry["present"])
                for child in directory.iterdir() if directory.is_dir() else []:
                    if child.name not in present:
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child, ignore_errors=True)
                        else:
                            child.unlink(missing_ok=True)
            elif "dir" in entry:
                unmount_all([Path(entry["dir"])])
                shutil.rmtree(entry["dir"], ignore_errors=True)
            elif "sysctl" in entry:
                _sysctl_path(entry["sysctl"]).write_text(entry["value"])
        except OSError as err:
            log.warning("undoing %s: %s", entry, err)


def recover_stale(record_dir: Path = RECORD_DIR) -> list[str]:
    """Undo the records of owners that died without undoing; returns their names."""
    recovered = []
    for record in sorted(record_dir.glob("*.json")) if record_dir.is_dir() else []:
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        owner = int(data.get("owner", 0))
        if pid_alive(owner) and proc_start_time(owner) == data.get("owner_start"):
            continue  # its owner still runs (a reused pid with another start time does not count)
        log.warning("undoing host changes a crashed run left: %s", record)
        undo_entries(list(data.get("entries", [])))
        record.unlink(missing_ok=True)
        recovered.append(record.stem)
    return recovered
