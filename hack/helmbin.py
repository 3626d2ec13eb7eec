"""The helm CLI, built from its Go module (``hack/helm/build.sh``: helm.sh/helm/v3, pinned by hack/helm/go.mod).

``ensure_helm()`` returns the cached binary, building it first when missing (about 6 minutes on 2
busy cores from an empty Go build cache; seconds after that). ``RTDRA_HELM`` names a helm binary
to use instead. CLI: ``python hack/helmbin.py`` prints its path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack.procs import CACHE_ROOT, run_build_script

BUILD_SCRIPT = Path(__file__).resolve().parent / "helm" / "build.sh"


class HelmBuildError(RuntimeError):
    """helm could not be built; the message names the build log."""


def ensure_helm(quiet: bool = False) -> Path:
    override = os.environ.get("RTDRA_HELM")
    if override:
        if not os.access(override, os.X_OK):
            raise HelmBuildError(f"RTDRA_HELM={override} is not an executable")
        return Path(override)
    try:
        helm = run_build_script(
            BUILD_SCRIPT, {"RTDRA_CACHE": str(CACHE_ROOT)}, quiet=quiet, log_hint=f"{CACHE_ROOT}/build-helm-*.log"
        )
    except RuntimeError as err:
        raise HelmBuildError(str(err)) from None
    if not os.access(helm, os.X_OK):
        raise HelmBuildError(f"{BUILD_SCRIPT} finished but {helm} is missing")
    return helm


if __name__ == "__main__":
    print(ensure_helm())
