"""Fixtures for end-to-end tests against a real control plane.

- ``control_plane`` (session): a started ``hack.cluster.ControlPlane`` (etcd,
  kube-apiserver, kube-scheduler - the upstream programs) in a temp dir, always
  torn down. No kubelet, no kube-controller-manager (see hack/cluster.py).
- ``kube_api``: an admin ``kubernetes.client.ApiClient``.
- ``make_node``: factory ``make_node(name=None, cpu="8", memory="16Gi", labels=None,
  extended=None)`` creating Ready nodes, deleted after the test.
- ``unique_name``: factory for names that do not collide across tests.
- ``node_binaries`` / ``node_image`` (session): the real node's programs
  (``hack.nodebins.NodeBinaries``: kubelet, containerd, runc, crictl, CNI plugins)
  and its image (``hack.images.ImageInfo``), for tests that run real containers.
  They need root; without it they skip like any missing prerequisite.
- ``helm_binary`` (session): helm built from its Go module (``hack.helmbin``);
  ``rtdra_image`` (session): the RT-DRA image built from the Dockerfile (``hack.image``).
  Both are built in the collection hook too, when selected tests use them.

The binaries are built (first time: long) or taken from the cache before the
first e2e test runs, outside any per-test timeout - each set only when a selected
test uses it (the control plane's for ``k8s_binaries``/``control_plane``, the
node's for ``node_binaries``/``node_image``). If they can't be had the tests are
skipped with the reason - or FAIL when RTDRA_REQUIRE_E2E=1 (CI).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hack.cluster import ControlPlane, ControlPlaneError  # noqa: E402
from hack.helmbin import HelmBuildError, ensure_helm  # noqa: E402
from hack.image import build_rtdra_image  # noqa: E402
from hack.images import ImageError, build_image  # noqa: E402
from hack.k8sbins import BuildError, ensure_binaries  # noqa: E402
from hack.nodebins import NodeBuildError, ensure_node_binaries  # noqa: E402
from hack.procs import pid_alive  # noqa: E402

_BINARIES: dict = {}
_NODE: dict = {}
_HELM: dict = {}
_RTDRA_IMAGE: dict = {}


def _require() -> bool:
    return os.environ.get("RTDRA_REQUIRE_E2E", "") not in ("", "0", "false", "no")


def _e2e_items(items, fixture: str):
    return [i for i in items if i.get_closest_marker("e2e") is not None and fixture in getattr(i, "fixturenames", ())]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Build/reuse the binaries once, after deselection, only for the e2e tests that will run."""
    if config.option.collectonly:
        return
    if _e2e_items(items, "k8s_binaries"):
        try:
            _BINARIES["ok"] = ensure_binaries()
        except (BuildError, ControlPlaneError, OSError) as e:
            _BINARIES["error"] = f"Kubernetes control-plane binaries unavailable: {e}"
    if _e2e_items(items, "node_binaries") or _e2e_items(items, "node_image"):
        _ensure_node()
    if _e2e_items(items, "helm_binary"):
        _ensure_helm()
    if _e2e_items(items, "rtdra_image"):
        _ensure_rtdra_image()


def _ensure_helm() -> None:
    if not _HELM:
        try:
            _HELM["ok"] = ensure_helm()
        except (HelmBuildError, OSError) as e:
            _HELM["error"] = f"helm unavailable: {e}"


def _ensure_rtdra_image() -> None:
    if _RTDRA_IMAGE:
        return
    if os.geteuid() != 0:
        _RTDRA_IMAGE["error"] = "building the RT-DRA image needs root (debootstrap, chroot)"
        return
    try:
        _RTDRA_IMAGE["ok"] = build_rtdra_image()
    except (ImageError, OSError) as e:
        _RTDRA_IMAGE["error"] = f"the RT-DRA image could not be built from the Dockerfile: {e}"


def _ensure_node() -> None:
    if _NODE:
        return
    if os.geteuid() != 0:
        _NODE["error"] = "the real node (containerd, runc) needs root"
        return
    try:
        _NODE["binaries"] = ensure_node_binaries()
        _NODE["image"] = build_image()
    except (NodeBuildError, ImageError, OSError) as e:
        _NODE["error"] = f"real-node binaries or image unavailable: {e}"


def _skip_or_fail(reason: str):
    if _require():
        pytest.fail(reason + " (RTDRA_REQUIRE_E2E=1)", pytrace=False)
    pytest.skip(reason + " (set RTDRA_REQUIRE_E2E=1 to make this a failure)")


def _binaries():
    if "ok" not in _BINARIES and "error" not in _BINARIES:  # hook did not run (e.g. -p no:...)
        try:
            _BINARIES["ok"] = ensure_binaries()
        except (BuildError, ControlPlaneError, OSError) as e:
            _BINARIES["error"] = f"Kubernetes control-plane binaries unavailable: {e}"
    if "error" in _BINARIES:
        _skip_or_fail(_BINARIES["error"])
    return _BINARIES["ok"]


@pytest.fixture(scope="session")
def k8s_binaries():
    return _binaries()


@pytest.fixture(scope="session")
def node_binaries():
    _ensure_node()
    if "error" in _NODE:
        _skip_or_fail(_NODE["error"])
    return _NODE["binaries"]


@pytest.fixture(scope="session")
def node_image(node_binaries):
    return _NODE["image"]


@pytest.fixture(scope="session")
def helm_binary():
    """The helm CLI built from its Go module (hack/helm/build.sh), for the chart's tests."""
    _ensure_helm()
    if "error" in _HELM:
        _skip_or_fail(_HELM["error"])
    return _HELM["ok"]


@pytest.fixture(scope="session")
def rtdra_image():
    """The RT-DRA image built from the Dockerfile (hack/image.py): before the tests, outside their timeouts."""
    _ensure_rtdra_image()
    if "error" in _RTDRA_IMAGE:
        _skip_or_fail(_RTDRA_IMAGE["error"])
    return _RTDRA_IMAGE["ok"]


@pytest.fixture(scope="session")
def control_plane(k8s_binaries, tmp_path_factory):
    # short path: keeps the unix-socket-free but long argv readable in logs
    workdir = Path(tempfile.mkdtemp(prefix="rtdra-cp-")) / "cp"
    cp = ControlPlane(workdir, k8s_binaries)
    try:
        cp.start()
    except ControlPlaneError as e:
        cp.stop()
        pytest.fail(f"control plane failed to start: {e}", pytrace=False)
    pids = cp.all_pids()
    try:
        yield cp
    finally:
        pids.update(cp.all_pids())  # kube-scheduler may have been restarted
        cp.stop()
        with contextlib.suppress(OSError):
            workdir.parent.rmdir()
        left = {n: p for n, p in pids.items() if pid_alive(p)}
        assert not left, f"control plane processes survived teardown: {left}"


@pytest.fixture
def kube_api(control_plane):
    api = control_plane.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def unique_name():
    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def make_node(control_plane, unique_name):
    created: list[str] = []

    def make(name: str | None = None, cpu: str = "8", memory: str = "16Gi", labels=None, extended=None, **kw) -> dict:
        name = name or unique_name("node")
        node = control_plane.create_node(name, cpu=cpu, memory=memory, labels=labels, extended=extended, **kw)
        created.append(name)
        return node

    yield make
    for name in created:
        control_plane.delete_node(name)
