"""The control plane's upstream programs: etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl.

``ensure_binaries()`` returns them from the cache (``~/.cache/rt-dra/k8s-<version>``),
running ``hack/controlplane/build.sh`` first when they are not there: the first
build compiles Kubernetes from source (tens of minutes on 2 cores); progress
goes to stderr. ``hack/nodebins.py`` is the same for the node's programs.

Environment: ``RTDRA_K8S_BIN_DIR`` (use the five programs there, no build),
``RTDRA_CACHE`` (cache root), ``K8S_VERSION``.

Stdlib and ``hack.procs`` only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hack.procs import CACHE_ROOT, read_versions, run_build_script

HACK = Path(__file__).resolve().parent
BUILD_SCRIPT = HACK / "controlplane" / "build.sh"
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.37.2")


class BuildError(RuntimeError):
    """The upstream binaries could not be built; the message names the build log."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_scheduler: Path
    versions: Mapping[str, str]
    #: Optional: only controller_manager=True control planes (the demo) need it.
    kube_controller_manager: Path | None = None
    #: The client, for what operators type: tests/e2e/test_manifests.py runs
    #: ``kubectl apply -k manifests/`` and ``kubectl get/describe nas`` with it.
    kubectl: Path | None = None

    @classmethod
    def from_dir(cls, d: Path) -> Binaries:
        kcm, kubectl = d / "kube-controller-manager", d / "kubectl"
        return cls(
            d / "etcd",
            d / "kube-apiserver",
            d / "kube-scheduler",
            read_versions(d / "VERSIONS"),
            kcm if kcm.exists() else None,
            kubectl if kubectl.exists() else None,
        )

    def exist(self) -> bool:
        programs = (self.etcd, self.kube_apiserver, self.kube_scheduler, self.kube_controller_manager, self.kubectl)
        return all(p is not None and os.access(p, os.X_OK) for p in programs)


def ensure_binaries(version: str = K8S_VERSION, quiet: bool = False) -> Binaries:
    """Return the cached etcd/kube-apiserver/kube-scheduler/kube-controller-manager/kubectl,
    building them first if needed (a cache without kubectl, from before it was added, is rebuilt).

    ``RTDRA_K8S_BIN_DIR`` points at a directory with the five programs and skips the build.
    """
    override = os.environ.get("RTDRA_K8S_BIN_DIR")
    if override:
        b = Binaries.from_dir(Path(override))
        if not b.exist():
            raise BuildError(
                f"RTDRA_K8S_BIN_DIR={override} lacks etcd/kube-apiserver/kube-scheduler/kube-controller-manager/kubectl"
            )
        return b
    cached = CACHE_ROOT / f"k8s-{version}"
    if (cached / ".complete").exists():
        b = Binaries.from_dir(cached)
        if b.exist():
            return b
    env = {"K8S_VERSION": version, "RTDRA_CACHE": str(CACHE_ROOT), "PYTHON": os.environ.get("PYTHON", sys.executable)}
    if not quiet:
        print(
            f"[cluster] building Kubernetes {version} control plane (cached afterwards in {cached})",
            file=sys.stderr,
            flush=True,
        )
    try:
        out_dir = run_build_script(BUILD_SCRIPT, env, quiet=quiet, log_hint=str(CACHE_ROOT / f"build-{version}.log"))
    except RuntimeError as err:
        raise BuildError(str(err)) from None
    b = Binaries.from_dir(out_dir)
    if not b.exist():
        raise BuildError(f"{BUILD_SCRIPT} reported {out_dir} but the binaries are missing")
    return b
