#!/usr/bin/env python3
"""The RT benchmark's container image, built like the node image from host files.

``rt-dra.local/rt-bench:1`` is ``rt-dra.local/node-base:1`` (busybox, ``/pause``;
:mod:`hack.images`) plus two Debian programs and exactly the shared libraries
``ldd`` names for them:

- ``rt-app`` (Debian package ``rt-app``, 1.0 in bookworm): the periodic real-time
  workload; it logs every job (start, end, slack, wake-up latency, see
  ``bench/bench_rt.py``);
- ``stress-ng`` (package ``stress-ng``): the CPU hogs.

Missing packages are installed with apt-get (root, Debian), like
``busybox-static`` is for the node image; nothing is pulled from a registry.
The tar is deterministic for the same inputs and cached under
``${RTDRA_CACHE:-~/.cache/rt-dra}/bench-image-<key>/`` where the key hashes every
file put into the image, ``pause.c``, gcc's version and these two modules.

Library::

    from hack.bench_image import build_bench_image
    info = build_bench_image()      # ImageInfo(name, tar_path, digest)

CLI: ``python hack/bench_image.py`` prints name, digest and tar path.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

HACK = Path(__file__).resolve().parent
sys.path.insert(0, str(HACK.parent))

from hack import images  # noqa: E402
from hack.images import ImageError, ImageInfo  # noqa: E402

BENCH_IMAGE_NAME = "rt-dra.local/rt-bench:1"
#: Program path in the image (and on the host) -> the Debian package that ships it.
PROGRAMS = {"/usr/bin/rt-app": "rt-app", "/usr/bin/stress-ng": "stress-ng"}
#: Loaded with dlopen, so ldd does not name it: glibc's pthread_exit unwinds with libgcc_s (rt-app's
#: worker ends with pthread_exit; without it: "libgcc_s.so.1 must be installed for pthread_exit to work").
DLOPENED = ("libgcc_s.so.1",)
TAR_NAME = "rt-bench.tar"
_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


def _ensure_programs() -> None:
    missing = sorted({pkg for path, pkg in PROGRAMS.items() if not Path(path).is_file()})
    if not missing:
        return
    images.apt_install(missing, "[bench-image]")
    for path, pkg in PROGRAMS.items():
        if not Path(path).is_file():
            raise ImageError(f"{pkg} installed but {path} is missing")


def shared_libraries(program: str) -> list[str]:
    """The paths of the shared objects (and the dynamic loader) ``ldd`` names for ``program``."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    return sorted({m.group(1) for line in out.splitlines() if (m := _LDD_PATH.search(line))})


def dlopened_library(soname: str) -> str:
    """The path of ``soname`` in the dynamic loader's cache (``ldconfig -p``)."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.split(" ", 1)[0] == soname and path.startswith("/"):
            return path
    raise ImageError(f"{soname} not in the dynamic loader's cache (ldconfig -p)")


def package_versions() -> str:
    """``rt-app=1.0-1 stress-ng=...``: what the image was built from (its history entry says it)."""
    pkgs = sorted(set(PROGRAMS.values()))
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}=${Version} ", *pkgs], capture_output=True, text=True, check=False
    ).stdout
    return out.strip() or "unknown versions"


def _files() -> dict[str, bytes]:
    """Image path -> content, for the programs and every library they load (symlinks resolved)."""
    files: dict[str, bytes] = {}
    for program in PROGRAMS:
        for path in [program, *shared_libraries(program)]:
            files[path.lstrip("/")] = Path(path).resolve().read_bytes()
    for soname in DLOPENED:
        path = dlopened_library(soname)
        files[path.lstrip("/")] = Path(path).resolve().read_bytes()
    return files


def _entries(files: dict[str, bytes]) -> list[images.Entry]:
    dirs = {str(p) for name in files for p in Path(name).parents if str(p) not in (".", "")}
    dirs -= {"bin", "dev", "etc", "proc", "root", "sys", "var", "tmp"}  # the base layer has these
    out = [images.Entry(d, tarfile.DIRTYPE, 0o755) for d in sorted(dirs)]
    out += [images.Entry(name, tarfile.REGTYPE, 0o755, data) for name, data in sorted(files.items())]
    return out


def build_bench_image(*, quiet: bool = False) -> ImageInfo:
    """Build (or take from the cache) ``rt-dra.local/rt-bench:1``; the cached tar must not be modified."""
    _ensure_programs()
    files = _files()
    key_parts = [Path(__file__).read_bytes()] + [name.encode() + b"\0" + data for name, data in sorted(files.items())]
    return images.build_cached(
        BENCH_IMAGE_NAME,
        "bench-image",
        key_parts,
        extra=_entries(files),
        history=f"hack/bench_image.py (node-base + {package_versions()} from Debian)",
        tar_name=TAR_NAME,
        quiet=quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return images.image_cli("bench_image.py", build_bench_image, argv, __doc__.split("\n\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
