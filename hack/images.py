#!/usr/bin/env python3
"""The one container image the real node needs, built here from host files.

``rt-dra.local/node-base:1`` serves two roles:

- the **sandbox image**: containerd pins it as ``pinned_images.sandbox``, so the
  pod sandbox runs its ``/pause`` (a static C program from ``hack/node/pause.c``
  that sleeps until SIGTERM/SIGINT and reaps orphaned children);
- the **workload image**: ``/bin/busybox`` (Debian's ``busybox-static``) with a
  symlink per applet in ``/bin`` (``sh``, ``sleep``, ``cat``, ``echo``, ``env``,
  ``grep``, ...), enough for test and demo containers. Its default command is
  ``/pause``; workloads set their own.

Why not pull an image: tests must not depend on a registry (none is reachable
here) nor on a container engine to build one. So the image is an OCI
image-layout tar (``oci-layout``, ``index.json``, ``blobs/sha256/...``) written
directly with :mod:`tarfile`; ``ctr -n k8s.io images import`` loads it (see
``hack/runtime.py``) and pods use ``imagePullPolicy: Never``. The manifest
descriptor in ``index.json`` carries ``io.containerd.image.name`` (the full
name, which containerd's importer prefers) and ``org.opencontainers.image.ref.name``
(the tag ``1``).

Deterministic: the same busybox binary, ``pause.c``, gcc and this file give
byte-identical tars and so the same manifest digest (every tar entry has mtime
0, owner 0:0, no user/group names, sorted names; JSON is canonical; ``gcc
-static`` output is reproducible). Built images are cached under
``${RTDRA_CACHE:-~/.cache/rt-dra}/image-<key>/`` where the key hashes those
inputs. Missing ``busybox-static`` is installed with apt-get (needs root on
Debian); missing gcc is an error.

Library::

    from hack.images import build_image
    info = build_image()            # ImageInfo(name, tar_path, digest)

CLI: ``python hack/images.py [--out PATH]`` prints name, digest and tar path.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HACK = Path(__file__).resolve().parent
PAUSE_SOURCE = HACK / "node" / "pause.c"
CACHE_ROOT = Path(os.environ.get("RTDRA_CACHE", Path.home() / ".cache" / "rt-dra"))

IMAGE_NAME = "rt-dra.local/node-base:1"
BUSYBOX = Path("/bin/busybox")
BUSYBOX_PACKAGE = "busybox-static"
TAR_NAME = "node-base.tar"
HISTORY = "hack/images.py (busybox-static + hack/node/pause.c)"

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


class ImageError(RuntimeError):
    """The image could not be built (a missing host tool or package)."""


@dataclass(frozen=True)
class ImageInfo:
    #: Full image reference, as containerd and pod specs name it.
    name: str
    #: The OCI image-layout tar (``ctr images import`` input).
    tar_path: Path
    #: Manifest digest, ``sha256:<hex>``: what ``ctr images ls`` shows as DIGEST.
    digest: str


# --------------------------------------------------------------------------- host inputs
def _busybox() -> Path:
    """Debian's static busybox; installed with apt-get when missing."""
    if not _is_static_busybox(BUSYBOX):
        if shutil.which("apt-get") is None:
            raise ImageError(f"{BUSYBOX} (a static busybox) is missing; install {BUSYBOX_PACKAGE}")
        print(f"[images] installing {BUSYBOX_PACKAGE} with apt-get", file=sys.stderr, flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", BUSYBOX_PACKAGE]):
            proc = subprocess.run(argv, env=env, stdout=sys.stderr, check=False)
            if proc.returncode != 0:
                raise ImageError(f"{' '.join(argv)} failed with exit code {proc.returncode}")
        if not _is_static_busybox(BUSYBOX):
            raise ImageError(f"{BUSYBOX_PACKAGE} installed but {BUSYBOX} is not a static busybox")
    return BUSYBOX


def _is_static_busybox(path: Path) -> bool:
    # Debian's dynamically linked `busybox` package also installs /bin/busybox;
    # a container has no libc, so only a static one (an ELF without PT_INTERP) will do.
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2):
        return False
    end = "<" if data[5] == 1 else ">"
    if data[4] == 2:  # ELF64
        (phoff,) = struct.unpack_from(end + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 54)
    else:
        (phoff,) = struct.unpack_from(end + "I", data, 28)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 42)
    pt_interp = 3
    return all(struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] != pt_interp for i in range(phnum))


def _applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout
    return sorted({a for a in out.split() if a and "/" not in a and a != "busybox"})


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageError("gcc is needed to build the static pause program (apt-get install gcc libc6-dev)")
    return gcc


def _build_pause(gcc: str, out: Path) -> None:
    proc = subprocess.run(
        [gcc, "-static", "-O2", "-Wall", "-Wextra", "-o", str(out), str(PAUSE_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageError(f"gcc -static {PAUSE_SOURCE} failed:\n{proc.stderr}")


# --------------------------------------------------------------------------- deterministic tar
@dataclass(frozen=True)
class Entry:
    name: str
    kind: bytes  # tarfile.DIRTYPE / REGTYPE / SYMTYPE
    mode: int
    data: bytes = b""
    link: str = ""


def _tar(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in sorted(entries, key=lambda e: e.name):
            ti = tarfile.TarInfo(e.name)
            ti.type, ti.mode, ti.mtime = e.kind, e.mode, 0
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            if e.kind == tarfile.SYMTYPE:
                ti.linkname = e.link
                tf.addfile(ti)
            elif e.kind == tarfile.REGTYPE:
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _rootfs_layer(busybox: bytes, applets: Sequence[str], pause: bytes, extra: Sequence[Entry] = ()) -> bytes:
    entries = [Entry(d, tarfile.DIRTYPE, 0o755) for d in ("bin", "dev", "etc", "proc", "root", "sys", "var")]
    entries += extra
    entries.append(Entry("tmp", tarfile.DIRTYPE, 0o1777))
    entries.append(Entry("bin/busybox", tarfile.REGTYPE, 0o755, busybox))
    entries += [Entry(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox") for a in applets]
    entries.append(Entry("pause", tarfile.REGTYPE, 0o755, pause))
    entries.append(Entry("etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/root:/bin/sh\n"))
    entries.append(Entry("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\n"))
    return _tar(entries)


def _manifest_and_index(config: bytes, layers: Sequence[tuple[str, int]], name: str) -> tuple[bytes, bytes]:
    """The manifest for ``config`` and ``layers`` (digest, size: uncompressed tars) and the index naming it."""
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": d, "size": n} for d, n in layers],
        }
    )
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_MEDIA_TYPE,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
                }
            ],
        }
    )
    return manifest, index


def image_layout(
    busybox: bytes,
    applets: Sequence[str],
    pause: bytes,
    name: str = IMAGE_NAME,
    *,
    extra: Sequence[Entry] = (),
    history: str = HISTORY,
) -> tuple[bytes, str]:
    """The OCI image-layout tar for these inputs and its manifest digest (pure).

    ``extra``: more rootfs entries (directories first named by their own entries), e.g. the
    benchmark image's programs and their shared libraries (``hack/bench_image.py``).
    """
    layer = _rootfs_layer(busybox, applets, pause, extra)
    config = _json(
        {
            "architecture": _GOARCH.get(platform.machine(), platform.machine()),
            "os": "linux",
            "config": {"Env": [PATH_ENV], "Cmd": ["/pause"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
            "history": [{"created_by": history}],
        }
    )
    manifest, index = _manifest_and_index(config, [(_digest(layer), len(layer))], name)
    entries = [
        Entry("oci-layout", tarfile.REGTYPE, 0o644, _json({"imageLayoutVersion": "1.0.0"})),
        Entry("index.json", tarfile.REGTYPE, 0o644, index),
        Entry("blobs", tarfile.DIRTYPE, 0o755),
        Entry("blobs/sha256", tarfile.DIRTYPE, 0o755),
    ]
    for blob in (layer, config, manifest):
        entries.append(Entry(f"blobs/sha256/{_digest(blob).split(':', 1)[1]}", tarfile.REGTYPE, 0o644, blob))
    return _tar(entries), _digest(manifest)


# --------------------------------------------------------------------------- images from a root file system
def directory_layer(root: Path, out: Path) -> tuple[str, int]:
    """Write ``root`` as one uncompressed layer tar to ``out``; its (digest, size), streamed, not held in memory.

    Deterministic like the tars above (sorted names, mtime 0, no user/group names) but keeping each file's
    owner, mode and hard links (a root file system made by debootstrap has all three).
    """
    root = Path(root)

    def clean(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        ti.mtime, ti.uname, ti.gname = 0, "", ""
        return ti

    with open(out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def walk(d: Path) -> None:
            for child in sorted(d.iterdir(), key=lambda p: p.name):
                arc = str(child.relative_to(root))
                if child.is_dir() and not child.is_symlink():
                    tf.add(child, arc, recursive=False, filter=clean)
                    walk(child)
                else:
                    tf.add(child, arc, recursive=False, filter=clean)

        walk(root)
    return directory_layer_digest(out)


def write_image_layout(out: Path, layer: Path, image_config: dict[str, object], name: str, history: str) -> str:
    """Write the OCI image-layout tar of one layer (a file from :func:`directory_layer`); its manifest digest.

    ``image_config``: the image configuration's ``config`` (Env, Cmd, User, WorkingDir, ...).
    """
    layer_digest, layer_size = directory_layer_digest(layer)
    config = _json(
        {
            "architecture": _GOARCH.get(platform.machine(), platform.machine()),
            "os": "linux",
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": history}],
        }
    )
    manifest, index = _manifest_and_index(config, [(layer_digest, layer_size)], name)
    small = [
        Entry("oci-layout", tarfile.REGTYPE, 0o644, _json({"imageLayoutVersion": "1.0.0"})),
        Entry("index.json", tarfile.REGTYPE, 0o644, index),
        Entry("blobs", tarfile.DIRTYPE, 0o755),
        Entry("blobs/sha256", tarfile.DIRTYPE, 0o755),
    ]
    small += [
        Entry(f"blobs/sha256/{_digest(b).split(':', 1)[1]}", tarfile.REGTYPE, 0o644, b) for b in (config, manifest)
    ]
    with open(out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
        with tarfile.open(fileobj=io.BytesIO(_tar(small))) as head:
            for ti in head.getmembers():
                tf.addfile(ti, head.extractfile(ti) if ti.isreg() else None)
        ti = tarfile.TarInfo(f"blobs/sha256/{layer_digest.split(':', 1)[1]}")
        ti.type, ti.mode, ti.mtime, ti.size = tarfile.REGTYPE, 0o644, 0, layer_size
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        with open(layer, "rb") as blob:
            tf.addfile(ti, blob)
    return _digest(manifest)


def directory_layer_digest(layer: Path) -> tuple[str, int]:
    """``(sha256:<hex>, size)`` of a layer file."""
    h = hashlib.sha256()
    with open(layer, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest(), layer.stat().st_size


# --------------------------------------------------------------------------- build + cache
def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def apt_install(packages: Sequence[str], tag: str) -> None:
    """Install Debian ``packages`` with apt-get (root); ``tag`` prefixes the line said first."""
    if shutil.which("apt-get") is None:
        raise ImageError(f"{' '.join(packages)} missing and no apt-get: install the Debian package(s)")
    print(f"{tag} installing {' '.join(packages)} with apt-get", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        proc = subprocess.run(argv, env=env, stdout=sys.stderr, check=False)
        if proc.returncode != 0:
            raise ImageError(f"{' '.join(argv)} failed with exit code {proc.returncode}")


def cache_entry(prefix: str, key: str, build: Callable[[Path], None], *, what: str | None = None) -> Path:
    """``CACHE_ROOT/<prefix>-<key>``, made by ``build(tmp)`` the first time it is asked for.

    One build per key at a time (a lock file); published by a rename once ``build`` returned, so a
    half-written entry is never used and a failed one leaves nothing. ``what``: printed before a
    build. The entry must not be modified.
    """
    cached = CACHE_ROOT / f"{prefix}-{key}"
    if (cached / ".complete").exists():
        return cached
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / f".build-{prefix}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cached / ".complete").exists():
            if what:
                print(f"{what} into {cached}", file=sys.stderr, flush=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-{key}.tmp.", dir=CACHE_ROOT))
            try:
                build(tmp)
                (tmp / ".complete").touch()
                shutil.rmtree(cached, ignore_errors=True)
                tmp.rename(cached)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return cached


def image_cli(prog: str, build: Callable[[], ImageInfo], argv: Sequence[str] | None, description: str) -> int:
    """The scripts' ``main``: build (or reuse) the image, print its name and digest, then its tar's path."""
    argparse.ArgumentParser(prog=prog, description=description).parse_args(argv)
    return report_build(prog, build)


def report_build(prog: str, build: Callable[[], ImageInfo]) -> int:
    """Run ``build``; print the image's name and digest, then its tar's path (1 and the reason if it failed)."""
    try:
        info = build()
    except ImageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    print(f"{info.name} {info.digest}")
    print(info.tar_path)
    return 0


def build_cached(
    name: str,
    prefix: str,
    key_parts: Sequence[bytes] = (),
    *,
    extra: Sequence[Entry] = (),
    history: str = HISTORY,
    tar_name: str = TAR_NAME,
    quiet: bool = False,
) -> ImageInfo:
    """Build (or take from the cache) image ``name``: the node-base rootfs plus ``extra`` entries.

    Cached under ``CACHE_ROOT/<prefix>-<key>``, the key hashing busybox, ``pause.c``, gcc's
    version, this module and ``key_parts`` (whatever else decides the content); one build at a
    time per key (a lock file), published by a rename so a half-written cache is never used.
    The cached tar must not be modified.
    """
    busybox, gcc = _busybox(), _gcc()
    gcc_version = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=True).stdout
    h = hashlib.sha256()
    for part in (busybox.read_bytes(), PAUSE_SOURCE.read_bytes(), gcc_version.encode(), Path(__file__).read_bytes()):
        h.update(hashlib.sha256(part).digest())
    for part in key_parts:
        h.update(hashlib.sha256(part).digest())
    key = h.hexdigest()[:12]

    def build(tmp: Path) -> None:
        _build_pause(gcc, tmp / "pause")
        data, digest = image_layout(
            busybox.read_bytes(), _applets(busybox), (tmp / "pause").read_bytes(), name, extra=extra, history=history
        )
        (tmp / "pause").unlink()
        (tmp / tar_name).write_bytes(data)
        (tmp / "digest").write_text(digest + "\n")
        (tmp / "name").write_text(name + "\n")

    cached = cache_entry(prefix, key, build, what=None if quiet else f"[images] building {name}")
    return ImageInfo(name, cached / tar_name, (cached / "digest").read_text().strip())


def build_image(out: Path | None = None, *, quiet: bool = False) -> ImageInfo:
    """Build (or take from the cache) ``rt-dra.local/node-base:1``.

    ``out``: where to put the tar (copied atomically from the cache); by default the
    cached tar itself is returned, which callers must not modify.
    """
    info = build_cached(IMAGE_NAME, "image", quiet=quiet)
    if out is None:
        return info
    out = Path(out).resolve()
    _atomic_copy(info.tar_path, out)
    return ImageInfo(info.name, out, info.digest)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--out", type=Path, help="write the OCI image-layout tar here (default: the cached tar)")
    args = ap.parse_args(argv)
    return report_build("images.py", lambda: build_image(args.out))


if __name__ == "__main__":
    sys.exit(main())
