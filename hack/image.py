#!/usr/bin/env python3
"""The RT-DRA image, built from the project's Dockerfile without a container engine or a registry.

The Dockerfile stays the one recipe (``docker build -t rt-dra:0.1.0 .`` runs it as it is); this
module carries out the same steps on this machine and refuses any instruction it does not
understand, so the two cannot drift apart silently:

- ``FROM debian:<suite>-slim`` + the stage's ``apt-get install ... <packages>``: ``debootstrap
  --variant=minbase --include=<packages> <suite>`` from the Debian mirror the host's apt uses
  (``/etc/apt/sources.list.d/debian.sources`` or ``sources.list``); Debian's debootstrap is
  installed with apt-get when missing (root). The root file system is cached by suite, packages
  and mirror (``${RTDRA_CACHE:-~/.cache/rt-dra}/rootfs-<key>/``): one debootstrap per change of them.
- the ``build`` stage (``COPY`` of the sources, then ``pip wheel ... --wheel-dir /wheels .``): the
  same ``pip wheel`` on the copied sources, by this machine's Python (which must be the same
  minor version as the suite's ``python3``: the wheels are for it); pip reaches PyPI as usual.
- ``COPY --from=build /wheels /wheels``: the wheels into the root file system.
- every other ``RUN``: ``chroot <rootfs> /bin/sh -c '<command>'`` with the stage's ``ENV`` - the
  command as written (venv, ``pip install --no-index``, ``useradd``). No network is needed there.
- ``ENV``, ``USER``, ``WORKDIR``, ``ENTRYPOINT``, ``CMD``: the image configuration.

The result is one uncompressed layer (``/dev``, ``/proc``, ``/sys`` left empty; apt's lists and
caches dropped, as the Dockerfile's ``rm -rf /var/lib/apt/lists/*`` does) in an OCI image-layout
tar written by :mod:`hack.images`, named ``rt-dra.local/rt-dra:<version>`` (setup.cfg's version):
``ctr -n k8s.io images import`` loads it, and pods use ``imagePullPolicy: Never``. Images are cached
under ``image-rtdra-<key>/`` where the key hashes the Dockerfile, every file it copies, this
module, :mod:`hack.images` and the root file system's key. Timings (2 busy cores): debootstrap
about 2-4 minutes cold; the rest (pip wheel, chroot steps, layer, tar) about a minute.

Library::

    from hack.image import build_rtdra_image
    info = build_rtdra_image()      # ImageInfo(name, tar_path, digest)

CLI: ``python hack/image.py`` prints name, digest and tar path (root: debootstrap and chroot).
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HACK = Path(__file__).resolve().parent
REPO = HACK.parent
sys.path.insert(0, str(REPO))

from hack import images  # noqa: E402
from hack.images import ImageError, ImageInfo  # noqa: E402

DOCKERFILE = REPO / "Dockerfile"
IMAGE_REPO = "rt-dra.local/rt-dra"
TAR_NAME = "rt-dra.tar"
#: Left empty in the layer: the runtime mounts them.
EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp", "var/lib/apt/lists", "var/cache/apt", "var/cache/debconf")
#: Emptied too, as Debian's slim images do (dpkg path-exclude): documentation nobody reads in a container.
SLIM_DIRS = ("usr/share/doc", "usr/share/man", "usr/share/info")
_FROM = re.compile(r"^debian:(?P<suite>[a-z]+)(?:-slim)?$")


def image_name() -> str:
    """``rt-dra.local/rt-dra:<setup.cfg version>``: a name with a domain, so the CRI does not add docker.io."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return f"{IMAGE_REPO}:{cfg['metadata']['version']}"


# --------------------------------------------------------------------------- the Dockerfile
@dataclass
class Stage:
    name: str
    base: str
    #: (instruction, argument) in order, continuation lines joined.
    steps: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile: comments dropped, ``\\``-continued lines joined."""
    stages: list[Stage] = []
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    for line in joined.splitlines():
        if not line.strip():
            continue
        op, _, arg = line.strip().partition(" ")
        op, arg = op.upper(), " ".join(arg.split())
        if op == "FROM":
            words = arg.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0]))
        elif not stages:
            raise ImageError(f"Dockerfile: {op} before FROM")
        else:
            stages[-1].steps.append((op, arg))
    return stages


def apt_packages(command: str) -> list[str] | None:
    """The packages of ``apt-get install`` in a RUN command (None if it installs none)."""
    for part in command.split("&&"):
        words = shlex.split(part)
        if len(words) >= 2 and words[0] == "apt-get" and words[1] == "install":
            return [w for w in words[2:] if not w.startswith("-")]
    return None


def suite_of(base: str) -> str:
    m = _FROM.match(base)
    if m is None:
        raise ImageError(f"Dockerfile: FROM {base}: only debian:<suite>[-slim] can be built without an engine")
    return m.group("suite")


@dataclass(frozen=True)
class Recipe:
    """What the Dockerfile asks for, in the terms this builder carries out."""

    suite: str
    packages: tuple[str, ...]
    #: Repository paths the build stage copies (files and directories), in order.
    sources: tuple[str, ...]
    #: The build stage's wheel command must name this directory, the final stage copies it.
    wheels: str
    #: ("run", command) / ("copy-wheels", dest) / ("env", "K=V"), in order, after debootstrap.
    steps: tuple[tuple[str, str], ...]
    config: dict[str, object]


def recipe(text: str) -> Recipe:
    """Read the Dockerfile's two stages; raise :class:`ImageError` on anything this builder cannot do."""
    stages = parse_dockerfile(text)
    if len(stages) != 2 or stages[0].name != "build":
        raise ImageError("Dockerfile: expected two stages, 'build' (the wheels) and the image")
    build, final = stages
    if suite_of(build.base) != suite_of(final.base):
        raise ImageError("Dockerfile: both stages must use the same Debian suite (the wheels are for its Python)")
    sources: list[str] = []
    wheel_dir = ""
    for op, arg in build.steps:
        if op == "COPY":
            *srcs, _dest = arg.split()
            sources += srcs
        elif op == "RUN" and "pip wheel" in arg:
            m = re.search(r"--wheel-dir\s+(\S+)", arg)
            if m is None or not arg.rstrip().endswith(" ."):
                raise ImageError("Dockerfile: the build stage's pip wheel must use --wheel-dir DIR and build '.'")
            wheel_dir = m.group(1)
        elif op == "RUN" and apt_packages(arg) is not None:
            continue  # the host's Python builds the wheels (same minor version, checked at build time)
        elif op != "WORKDIR":
            raise ImageError(f"Dockerfile: build stage: {op} {arg}: not understood by hack/image.py")
    if not wheel_dir:
        raise ImageError("Dockerfile: the build stage has no 'pip wheel'")
    packages: list[str] = []
    steps: list[tuple[str, str]] = []
    env: dict[str, str] = {}
    config: dict[str, object] = {"WorkingDir": "/"}
    for op, arg in final.steps:
        pkgs = apt_packages(arg) if op == "RUN" else None
        if pkgs is not None:
            if steps:
                raise ImageError("Dockerfile: apt-get install must come first in the image stage (debootstrap)")
            packages += pkgs
        elif op == "RUN":
            steps.append(("run", arg))
        elif op == "COPY":
            words = arg.split()
            if words != ["--from=build", wheel_dir, wheel_dir]:
                raise ImageError(
                    f"Dockerfile: COPY {arg}: only COPY --from=build {wheel_dir} {wheel_dir} is understood"
                )
            steps.append(("copy-wheels", wheel_dir))
        elif op == "ENV":
            key, sep, value = arg.partition("=")
            if not sep or " " in value:
                raise ImageError(f"Dockerfile: ENV {arg}: write ENV KEY=VALUE, one per line")
            env[key] = value
            steps.append(("env", arg))
        elif op == "USER":
            config["User"] = arg
        elif op == "WORKDIR":
            config["WorkingDir"] = arg
        elif op in ("ENTRYPOINT", "CMD"):
            value = json.loads(arg)
            if value:
                config[op.capitalize() if op == "CMD" else "Entrypoint"] = value
        else:
            raise ImageError(f"Dockerfile: {op} {arg}: not understood by hack/image.py")
    env.setdefault("PATH", images.PATH_ENV.split("=", 1)[1])
    config["Env"] = [f"{k}={v}" for k, v in env.items()]
    return Recipe(suite_of(final.base), tuple(packages), tuple(sources), wheel_dir, tuple(steps), config)


# --------------------------------------------------------------------------- host tools
def _mirror() -> str:
    """The Debian mirror this host's apt uses (deb822 ``URIs:`` or a one-line ``deb`` entry)."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if path.is_file():
            text = path.read_text()
            for m in re.finditer(r"^URIs:\s*(\S+)|^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, flags=re.M):
                uri = m.group(1) or m.group(2)
                if "security" not in uri:
                    return uri
    raise ImageError("no Debian mirror found in /etc/apt/sources.list[.d]: cannot run debootstrap")


def _run(argv: Sequence[str], what: str, **kw: object) -> None:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ImageError(f"{what} failed ({proc.returncode}):\n{tail}")


def base_rootfs(suite: str, packages: Sequence[str]) -> Path:
    """``debootstrap --variant=minbase --include=...``, cached: the returned directory must not be modified."""
    if os.geteuid() != 0:
        raise ImageError("building the image needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        images.apt_install(["debootstrap"], "[image]")
    mirror = _mirror()
    key = hashlib.sha256(json.dumps([suite, sorted(packages), mirror]).encode()).hexdigest()[:12]

    def build(tmp: Path) -> None:
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(tmp / "root")]
        _run([*argv, mirror], f"debootstrap {suite}")

    cached = images.cache_entry("rootfs", key, build, what=f"[image] debootstrap {suite} + {' '.join(packages)}")
    return cached / "root"


def _chroot_python_version(root: Path) -> str:
    out = subprocess.run(
        ["chroot", str(root), "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": images.PATH_ENV.split("=", 1)[1]},
    )
    return out.stdout.strip()


# --------------------------------------------------------------------------- build
def _source_files(sources: Sequence[str]) -> list[Path]:
    """Every file the build stage copies (directories walked, caches left out), sorted."""
    files: list[Path] = []
    for src in sources:
        path = REPO / src
        if path.is_dir():
            files += [
                p
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
            ]
        elif path.is_file():
            files.append(path)
        else:
            raise ImageError(f"Dockerfile copies {src}, which does not exist")
    return sorted(set(files))


def image_key(rec: Recipe, text: str) -> str:
    h = hashlib.sha256()
    parts = [text.encode(), Path(__file__).read_bytes(), Path(images.__file__).read_bytes()]
    parts += [json.dumps([rec.suite, sorted(rec.packages), _mirror()]).encode()]
    parts += [str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() for p in _source_files(rec.sources)]
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def build_rtdra_image(*, quiet: bool = False) -> ImageInfo:
    """Build (or take from the cache) ``rt-dra.local/rt-dra:<version>``; the cached tar must not be modified."""
    text = DOCKERFILE.read_text()
    rec = recipe(text)
    name = image_name()
    key = image_key(rec, text)

    def build(tmp: Path) -> None:
        digest = _build(rec, base_rootfs(rec.suite, rec.packages), tmp, name)
        (tmp / "digest").write_text(digest + "\n")
        (tmp / "name").write_text(name + "\n")

    cached = images.cache_entry("image-rtdra", key, build, what=None if quiet else f"[image] building {name}")
    return ImageInfo(name, cached / TAR_NAME, (cached / "digest").read_text().strip())


def _build(rec: Recipe, base: Path, tmp: Path, name: str) -> str:
    root = tmp / "root"
    _run(["cp", "-a", str(base), str(root)], "copying the root file system")
    want = _chroot_python_version(root)
    have = "{}.{}".format(*sys.version_info[:2])
    if want != have:
        raise ImageError(f"{rec.suite}'s python3 is {want}, this one is {have}: the wheels must be built by {want}")
    # The build stage: its sources, then its pip wheel (by this Python, for the same minor version).
    src = tmp / "src"
    for path in _source_files(rec.sources):
        dest = src / path.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    wheels = tmp / "wheels"
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels), "."]
    _run(pip, "pip wheel (the Dockerfile's build stage)", cwd=src)
    env = {"PATH": images.PATH_ENV.split("=", 1)[1], "HOME": "/root", "LANG": "C.UTF-8"}
    for kind, arg in rec.steps:
        if kind == "copy-wheels":
            shutil.copytree(wheels, root / arg.lstrip("/"))
        elif kind == "env":
            k, _, v = arg.partition("=")
            env[k] = v
        else:
            _run(["chroot", str(root), "/bin/sh", "-c", arg], f"RUN {arg}", env=env)
    for d in EMPTY_DIRS + SLIM_DIRS:
        path = root / d
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    layer = tmp / "layer.tar"
    images.directory_layer(root, layer)
    for done in (root, src, wheels):
        shutil.rmtree(done)
    history = f"hack/image.py: the Dockerfile, carried out on debootstrap {rec.suite} + {' '.join(rec.packages)}"
    digest = images.write_image_layout(tmp / TAR_NAME, layer, rec.config, name, history)
    layer.unlink()
    return digest


def main(argv: Sequence[str] | None = None) -> int:
    return images.image_cli("image.py", build_rtdra_image, argv, __doc__.split("\n\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
