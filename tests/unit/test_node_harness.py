"""The real-node harness's pure parts: the image layout, containerd's config, the CNI network.

No root, no containerd: these check what hack/images.py and hack/runtime.py write, so a
regression shows here before an e2e run (tests/e2e/test_runtime.py runs the real thing).
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hack.images import IMAGE_NAME, ImageInfo, image_layout  # noqa: E402
from hack.nodebins import NodeBinaries  # noqa: E402
from hack.runtime import POD_CIDR, Containerd, to_toml  # noqa: E402


def _layout(pause: bytes = b"pause-bytes") -> tuple[bytes, str]:
    return image_layout(b"busybox-bytes", ["cat", "env", "sh", "sleep"], pause)


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else b"") for m in tf.getmembers()}


def test_the_image_layout_is_byte_identical_for_the_same_inputs_and_changes_with_them() -> None:
    a, digest_a = _layout()
    b, digest_b = _layout()
    assert a == b and digest_a == digest_b
    _, digest_c = _layout(pause=b"other")
    assert digest_c != digest_a


def test_the_image_index_names_the_image_and_every_blob_matches_its_digest() -> None:
    data, digest = _layout()
    files = _members(data)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (desc,) = json.loads(files["index.json"])["manifests"]
    assert desc["digest"] == digest
    assert desc["annotations"]["io.containerd.image.name"] == IMAGE_NAME
    for name, blob in files.items():
        if name.startswith("blobs/sha256/") and blob:
            assert hashlib.sha256(blob).hexdigest() == name.rsplit("/", 1)[1]
    manifest = json.loads(files[f"blobs/sha256/{digest.split(':')[1]}"])
    layer = files[f"blobs/sha256/{manifest['layers'][0]['digest'].split(':')[1]}"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["pause"].mode == 0o755 and members["tmp"].mode == 0o1777
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members.values())


def _containerd(tmp_path: Path) -> Containerd:
    nb = NodeBinaries.from_dir(tmp_path / "node")
    image = ImageInfo(IMAGE_NAME, tmp_path / "img.tar", "sha256:" + "0" * 64)
    return Containerd(tmp_path / "w", nb, cdi_spec_dirs=[tmp_path / "cdi"], image=image)


def test_containerd_config_keeps_every_socket_and_dir_in_the_workdir(tmp_path: Path) -> None:
    ctd = _containerd(tmp_path)
    cfg = tomllib.loads(to_toml(ctd.config()))
    assert cfg["version"] == 4
    plugins = cfg["plugins"]
    # v4 trap: the ttrpc server does not follow the grpc address
    assert plugins["io.containerd.server.v1.grpc"]["address"] == str(ctd.socket)
    assert plugins["io.containerd.server.v1.ttrpc"]["address"] == f"{ctd.socket}.ttrpc"
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["cdi_spec_dirs"] == [str(tmp_path / "cdi")]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == IMAGE_NAME
    assert plugins["io.containerd.grpc.v1.cri"]["stream_server_address"] == "127.0.0.1"
    paths = [cfg["root"], cfg["state"], cfg["temp"], plugins["io.containerd.internal.v1.opt"]["path"]]
    paths += [v for k, v in plugins["io.containerd.nri.v1.nri"].items() if k.endswith("path")]
    assert all(Path(p).is_relative_to(ctd.workdir) for p in paths)
    assert len(str(ctd.shim_socket_dir)) <= 42


def test_a_long_workdir_moves_only_the_shim_sockets_out(tmp_path: Path) -> None:
    ctd = Containerd(tmp_path / ("x" * 60), NodeBinaries.from_dir(tmp_path))
    assert len(str(ctd.shim_socket_dir)) <= 42
    assert not ctd.shim_socket_dir.is_relative_to(ctd.workdir)


@pytest.mark.parametrize("link", ["dummy", "tap"])
def test_pods_get_an_unconnected_eth0_from_a_range_no_lan_uses_and_no_route(tmp_path: Path, link: str) -> None:
    net = ipaddress.ip_network(POD_CIDR)
    for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
        assert not net.overlaps(ipaddress.ip_network(private))
    assert net.subnet_of(ipaddress.ip_network("198.18.0.0/15"))
    ctd = _containerd(tmp_path)
    ctd.link_plugin = link
    (plugin,) = ctd.cni_config()["plugins"]
    assert plugin["type"] == link and "bridge" not in plugin
    assert plugin["ipam"]["type"] == "host-local" and "routes" not in plugin["ipam"]
    assert plugin["ipam"]["ranges"] == [[{"subnet": POD_CIDR}]]


@pytest.mark.parametrize("value", [{"a": {"b.c": {"d": [1, "x"]}}}, {"k": True, "t": {"s": 'q"uote'}}])
def test_to_toml_round_trips(value: dict) -> None:
    assert tomllib.loads(to_toml(value)) == value
