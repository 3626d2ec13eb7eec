"""hack/image.py reads the Dockerfile and carries it out: what it reads, what it refuses, what it writes."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hack import image, images  # noqa: E402
from hack.images import ImageError  # noqa: E402


def test_the_dockerfile_is_a_recipe_the_builder_understands() -> None:
    rec = image.recipe((REPO / "Dockerfile").read_text())
    assert rec.suite == "bookworm"
    assert {"python3", "python3-venv", "util-linux"} <= set(rec.packages)
    assert rec.sources == ("pyproject.toml", "setup.cfg", "README.md", "rtdra", "extender", "webhook", "agent")
    assert rec.wheels == "/wheels"
    kinds = [k for k, _ in rec.steps]
    assert kinds.index("copy-wheels") < kinds.index("run")  # the wheels are there before pip installs them
    runs = [a for k, a in rec.steps if k == "run"]
    assert any("pip install --no-cache-dir --no-index /wheels/*.whl" in r for r in runs)
    assert any("useradd --system --uid 65532" in r for r in runs)
    assert rec.config["User"] == "65532"
    assert rec.config["Cmd"] == ["rtdra", "--help"]
    assert "Entrypoint" not in rec.config
    [path] = [e for e in rec.config["Env"] if str(e).startswith("PATH=")]  # type: ignore[attr-defined]
    assert str(path).startswith("PATH=/opt/rt-dra/bin:")


def test_every_python_package_is_copied_into_the_build_stage() -> None:
    """A package setup.cfg ships but the Dockerfile does not copy would be missing from the image."""
    rec = image.recipe((REPO / "Dockerfile").read_text())
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages <= set(rec.sources)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("FROM python:3.11-slim AS build\nRUN pip wheel --wheel-dir /w .\nFROM python:3.11-slim\n", "debian"),
        ("FROM debian:bookworm AS build\nRUN pip wheel --wheel-dir /w .\nFROM debian:bookworm\nADD x /x\n", "ADD"),
        ("FROM debian:bookworm AS build\nRUN pip wheel --wheel-dir /w .\nFROM debian:trixie\n", "same Debian"),
        ("FROM debian:bookworm AS build\nRUN make\nFROM debian:bookworm\n", "not understood"),
        ("FROM debian:bookworm AS build\nRUN pip wheel --wheel-dir /w .\nFROM debian:bookworm\nCOPY a /a\n", "COPY"),
        (
            "FROM debian:bookworm AS build\nRUN pip wheel --wheel-dir /w .\nFROM debian:bookworm\n"
            "RUN true\nRUN apt-get update && apt-get install -y x\n",
            "first",
        ),
    ],
)
def test_what_it_cannot_carry_out_is_refused(text: str, error: str) -> None:
    with pytest.raises(ImageError, match=error):
        image.recipe(text)


def test_apt_packages_are_read_from_the_install_command() -> None:
    cmd = "apt-get update && apt-get install -y --no-install-recommends a b-c && rm -rf /var/lib/apt/lists/*"
    assert image.apt_packages(cmd) == ["a", "b-c"]
    assert image.apt_packages("useradd x") is None


def test_a_directory_layer_keeps_owners_modes_links_and_is_deterministic(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\n")
    if os.geteuid() == 0:
        os.chown(root / "usr" / "bin" / "tool", 65532, 65532)
    os.chmod(root / "usr" / "bin" / "tool", 0o4755)  # after chown, which clears set-user-ID
    os.link(root / "usr" / "bin" / "tool", root / "usr" / "bin" / "tool2")
    os.symlink("usr/bin", root / "bin")
    first = images.directory_layer(root, tmp_path / "a.tar")
    os.utime(root / "usr" / "bin" / "tool", (1, 1))  # mtimes do not matter
    assert images.directory_layer(root, tmp_path / "b.tar") == first
    assert first[0] == "sha256:" + hashlib.sha256((tmp_path / "a.tar").read_bytes()).hexdigest()
    with tarfile.open(tmp_path / "a.tar") as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert list(members) == sorted(members)
    tool = members["usr/bin/tool"]
    assert tool.mode == 0o4755 and tool.mtime == 0 and tool.uname == ""
    if os.geteuid() == 0:
        assert (tool.uid, tool.gid) == (65532, 65532)
    assert members["usr/bin/tool2"].islnk() and members["usr/bin/tool2"].linkname == "usr/bin/tool"
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"


def test_the_image_layout_names_the_image_and_chains_its_digests(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("x\n")
    layer = tmp_path / "layer.tar"
    diff_id, _ = images.directory_layer(root, layer)
    config = {"User": "65532", "Cmd": ["rtdra", "--help"]}
    digest = images.write_image_layout(tmp_path / "img.tar", layer, config, "rt-dra.local/rt-dra:0.1.0", "test")
    with tarfile.open(tmp_path / "img.tar") as tf:
        blob = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isreg()}  # type: ignore[union-attr]
    index = json.loads(blob["index.json"])
    [entry] = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == "rt-dra.local/rt-dra:0.1.0"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "0.1.0"
    manifest = json.loads(blob[f"blobs/sha256/{digest.split(':')[1]}"])
    cfg_digest = manifest["config"]["digest"]
    cfg = json.loads(blob[f"blobs/sha256/{cfg_digest.split(':')[1]}"])
    assert cfg["config"] == config and cfg["rootfs"]["diff_ids"] == [diff_id]
    [layer_desc] = manifest["layers"]
    assert layer_desc["digest"] == diff_id
    assert blob[f"blobs/sha256/{diff_id.split(':')[1]}"] == layer.read_bytes()
