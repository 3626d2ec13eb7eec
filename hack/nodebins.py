"""The real node's upstream programs: kubelet, containerd, runc, crictl, CNI plugins.

``ensure_node_binaries()`` returns them from the cache, running
``hack/node/build.sh`` first when they are not there (minutes on 2 cores the
first time; progress on stderr). The script documents the exact versions and
why each is pinned where it is: kubelet comes from the control plane's own
module (``hack/controlplane/go.mod``), so node and control plane always run the
same Kubernetes version; containerd, runc, crictl and the CNI plugins each have a
small pinned module under ``hack/node/<name>/``.

Build times (``VERSIONS`` records them per ``go build``): from an empty Go build
cache on 2 busy cores, kubelet 1038 s, containerd+ctr 211 s, and then only seconds
to a minute for the shim, runc, crictl and the CNI plugins - those figures are
incremental, each step reusing packages (gRPC, protobuf, ...) compiled by the steps
before it. With a warm Go cache (e.g. after the control-plane build) everything
takes 2-3 minutes.

``RTDRA_NODE_BIN_DIR`` points at a directory laid out like the build output
(``bin/`` with the six programs, ``cni/`` with the plugins) and skips the build.
``RTDRA_CACHE`` is the cache root (default ``~/.cache/rt-dra``).

Stdlib and ``hack.procs`` only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script (make node): make ``hack`` importable
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack.procs import CACHE_ROOT, read_versions, run_build_script

HACK = Path(__file__).resolve().parent
NODE_BUILD_SCRIPT = HACK / "node" / "build.sh"

#: The CNI plugins the build provides (``cni_bin_dir``).
CNI_PLUGINS = ("loopback", "dummy", "tap", "host-local")


class NodeBuildError(RuntimeError):
    """The node programs could not be built; the message names the build log."""


@dataclass(frozen=True)
class NodeBinaries:
    """Absolute paths of one complete node build."""

    #: The directory holding every program below except the CNI plugins.
    bin_dir: Path
    kubelet: Path
    containerd: Path
    #: containerd-shim-runc-v2: containerd finds it on PATH, so put ``bin_dir`` first.
    containerd_shim: Path
    ctr: Path
    runc: Path
    crictl: Path
    #: Holds at least ``loopback``, ``dummy``, ``tap`` and ``host-local``.
    cni_bin_dir: Path
    #: The VERSIONS file: upstream versions, Go version, build seconds per binary.
    versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dir(cls, root: Path) -> NodeBinaries:
        root = Path(root).resolve()
        b = root / "bin"
        versions = read_versions(root / "VERSIONS")
        return cls(
            bin_dir=b,
            kubelet=b / "kubelet",
            containerd=b / "containerd",
            containerd_shim=b / "containerd-shim-runc-v2",
            ctr=b / "ctr",
            runc=b / "runc",
            crictl=b / "crictl",
            cni_bin_dir=root / "cni",
            versions=versions,
        )

    def missing(self) -> list[Path]:
        programs = [self.kubelet, self.containerd, self.containerd_shim, self.ctr, self.runc, self.crictl]
        programs += [self.cni_bin_dir / p for p in CNI_PLUGINS]
        return [p for p in programs if not os.access(p, os.X_OK)]


def ensure_node_binaries(quiet: bool = False) -> NodeBinaries:
    """Return the cached node programs, building them first if needed.

    The cache directory's name carries a hash of the build script and every pinned
    go.mod/go.sum, so the script itself decides whether the cache is current (a
    cache check costs one ``go env``).
    """
    override = os.environ.get("RTDRA_NODE_BIN_DIR")
    if override:
        nb = NodeBinaries.from_dir(Path(override))
        if nb.missing():
            raise NodeBuildError(f"RTDRA_NODE_BIN_DIR={override} lacks {', '.join(map(str, nb.missing()))}")
        return nb
    try:
        out = run_build_script(
            NODE_BUILD_SCRIPT, {"RTDRA_CACHE": str(CACHE_ROOT)}, quiet=quiet, log_hint=f"{CACHE_ROOT}/build-node-*.log"
        )
    except RuntimeError as err:
        raise NodeBuildError(str(err)) from None
    nb = NodeBinaries.from_dir(out)
    if nb.missing():
        raise NodeBuildError(f"{NODE_BUILD_SCRIPT} finished but {', '.join(map(str, nb.missing()))} are missing")
    return nb


if __name__ == "__main__":
    nb = ensure_node_binaries()
    for k, v in nb.versions.items():
        print(f"{k}={v}")
    print(nb.bin_dir.parent)
