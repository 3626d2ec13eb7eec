"""The real container runtime: containerd + runc + CNI run a pod from our image, CDI reaches it.

Drives ``hack.runtime.Containerd`` through its CRI with ``crictl`` (a unix socket,
no network) the way kubelet would: a pod sandbox in its own network namespace
(not hostNetwork) and a container whose CDI device - named in the CRI container
config's ``CDI_devices``, the field kubelet fills from DRA and device plugins -
injects an environment variable and a ``createRuntime`` hook. Container output is
read from the CRI log file. Then stop() must leave no process, mount or dir.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.hostchanges import cgroup_dirs, mounts_under
from hack.procs import pid_alive
from hack.runtime import CNI_CACHE_DIR, POD_CIDR, Containerd, clean_stale_instances, shim_pids

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CDI_KIND = "rt-dra.test/probe"


@pytest.fixture
def base() -> Iterator[Path]:
    # short: containerd's shim socket dir must stay under 42 characters
    d = Path(tempfile.mkdtemp(prefix="rtdra-node-"))
    try:
        yield d
    finally:
        clean_stale_instances()  # a crashed child's leftovers, if the test failed before cleaning them
        left = mounts_under([d])
        assert not left, f"mounts left under {d}: {left}"  # never rmtree through a mount
        shutil.rmtree(d, ignore_errors=True)


def write_probe_cdi_spec(cdi_dir: Path, value: str, hook_out: Path) -> Path:
    """A CDI spec whose device sets RTDRA_PROBE and runs a createRuntime hook saving its stdin."""
    hook = cdi_dir.parent / "hook.sh"
    hook.write_text('#!/bin/sh\ncat > "$1"\n')
    hook.chmod(0o755)
    spec = {
        "cdiVersion": "0.6.0",
        "kind": CDI_KIND,
        "devices": [
            {
                "name": "dev0",
                "containerEdits": {
                    "env": [f"RTDRA_PROBE={value}"],
                    "hooks": [{"hookName": "createRuntime", "path": str(hook), "args": [str(hook), str(hook_out)]}],
                },
            }
        ],
    }
    path = cdi_dir / "rt-dra-test-probe.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def run_probe_pod(ctd: Containerd, base: Path, name: str) -> tuple[str, str, Path]:
    """Run a pod and a container printing its env and eth0 address; return pod id, container id, log file."""
    log_dir = base / "logs" / name
    pod = {
        "metadata": {"name": name, "namespace": "default", "uid": uuid.uuid4().hex, "attempt": 0},
        "hostname": name,
        "log_directory": str(log_dir),
        "linux": {"cgroup_parent": ctd.cgroup_parent, "security_context": {"namespace_options": {"network": 0}}},
    }
    assert ctd.image is not None
    container = {
        "metadata": {"name": "probe"},
        "image": {"image": ctd.image.name},
        "command": ["/bin/sh", "-c", "env; ip -4 -o addr show dev eth0; ip route; echo PROBE-READY; exec sleep 3600"],
        "log_path": "probe/0.log",
        "CDI_devices": [{"name": f"{CDI_KIND}=dev0"}],
        "linux": {},
    }
    pod_json, ctr_json = base / f"{name}-pod.json", base / f"{name}-ctr.json"
    pod_json.write_text(json.dumps(pod))
    ctr_json.write_text(json.dumps(container))
    pod_id = ctd.crictl("runp", str(pod_json)).strip()
    ctr_id = ctd.crictl("create", pod_id, str(ctr_json), str(pod_json)).strip()
    ctd.crictl("start", ctr_id)
    return pod_id, ctr_id, log_dir / "probe" / "0.log"


def wait_for_log(path: Path, marker: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            text = path.read_text()
            if marker in text:
                return text
        time.sleep(0.1)
    raise AssertionError(f"{marker!r} not in {path} after {timeout}s: {text!r}")


def log_lines(cri_log: str) -> list[str]:
    """The container's output lines from a CRI log file (``<time> <stream> <tag> <line>``)."""
    return [line.split(" ", 3)[3] for line in cri_log.splitlines() if line.count(" ") >= 3]


def test_a_pod_runs_from_our_image_with_its_cdi_device_a_dummy_eth0_and_stop_leaves_nothing(
    node_binaries, node_image, base: Path
) -> None:
    value = uuid.uuid4().hex
    cni_cache_existed = CNI_CACHE_DIR.exists()
    cdi_dir, hook_out = base / "cdi", base / "hook-state.json"
    cdi_dir.mkdir()
    write_probe_cdi_spec(cdi_dir, value, hook_out)
    ctd = Containerd(base / "ctd", node_binaries, cdi_spec_dirs=[cdi_dir], image=node_image)
    try:
        ctd.start()
        pod_id, ctr_id, log_file = run_probe_pod(ctd, base, "probe")
        lines = log_lines(wait_for_log(log_file, "PROBE-READY"))

        # the CDI device's env reached the container's process
        assert f"RTDRA_PROBE={value}" in lines

        # eth0 is in the pod's own netns, addressed from our range, and the CRI reports that address
        m = next((re.search(r"inet (\d+\.\d+\.\d+\.\d+)/\d+", line) for line in lines if "eth0" in line), None)
        assert m, f"no eth0 address in the container's output: {lines}"
        pod_ip = ipaddress.ip_address(m.group(1))
        assert pod_ip in ipaddress.ip_network(POD_CIDR)
        assert not [line for line in lines if line.startswith("default")], f"the pod has a default route: {lines}"
        status = json.loads(ctd.crictl("inspectp", "-o", "json", pod_id))["status"]
        assert status["network"]["ip"] == str(pod_ip)
        assert status["linux"]["namespaces"]["options"]["network"] == "POD"

        # the createRuntime hook got the OCI state: the container's pid and the CRI annotations
        state = json.loads(hook_out.read_text())
        assert state["status"] == "creating"
        assert state["id"] == ctr_id
        container_pid = state["pid"]
        assert container_pid > 0 and pid_alive(container_pid)
        annotations = state["annotations"]
        assert annotations["io.kubernetes.cri.container-type"] == "container"
        assert annotations["io.kubernetes.cri.container-name"] == "probe"
        assert annotations["io.kubernetes.cri.sandbox-id"] == pod_id
        assert annotations["io.kubernetes.cri.image-name"] == node_image.name

        containerd_pid, shims = ctd.pid, shim_pids(ctd.socket)
        assert containerd_pid is not None and shims
        assert mounts_under([ctd.workdir])  # rootfs, shm, netns: there is something to clean
    finally:
        ctd.stop()

    for pid in (containerd_pid, container_pid, *shims):
        assert not pid_alive(pid), f"pid {pid} survived stop()"
    assert not shim_pids(ctd.socket)
    assert not mounts_under([base])
    assert not ctd.workdir.exists() and not ctd.shim_socket_dir.exists()
    assert not cgroup_dirs(ctd.cgroup_parent)
    assert not ctd.record_file.exists()
    assert not list(CNI_CACHE_DIR.glob(f"results/*{pod_id}*"))
    if not cni_cache_existed:
        assert not CNI_CACHE_DIR.exists()


CRASHING_RUN = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from hack.images import build_image
from hack.nodebins import ensure_node_binaries
from hack.runtime import Containerd
from tests.e2e.test_runtime import run_probe_pod, wait_for_log, write_probe_cdi_spec
base = Path(sys.argv[2])
(base / "cdi").mkdir()
write_probe_cdi_spec(base / "cdi", "crash", base / "hook-state.json")
ctd = Containerd(base / "ctd", ensure_node_binaries(quiet=True), cdi_spec_dirs=[base / "cdi"], image=build_image())
ctd.start()
pod_id, ctr_id, log_file = run_probe_pod(ctd, base, "crash")
wait_for_log(log_file, "PROBE-READY")
state = json.loads((base / "hook-state.json").read_text())
print(json.dumps({"socket": str(ctd.socket), "pod": pod_id, "workdir": str(ctd.workdir), "containerd": ctd.pid,
                  "container": state["pid"], "cgroup_parent": ctd.cgroup_parent,
                  "record": str(ctd.record_file)}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # a crash: no stop(), no finally
"""


def test_the_next_start_cleans_up_after_a_crashed_run(node_binaries, node_image, base: Path) -> None:
    crashed = base / "crashed"
    crashed.mkdir()
    env = dict(os.environ, RTDRA_NODE_BIN_DIR=str(node_binaries.bin_dir.parent))
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, str(REPO), str(crashed)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = json.loads(proc.stdout.strip().splitlines()[-1])

    # what a crash leaves: containerd died with its parent, but shims, containers and mounts stay
    deadline = time.monotonic() + 10
    while pid_alive(left["containerd"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(left["containerd"]), "containerd outlived the process that started it"
    assert shim_pids(Path(left["socket"])) and pid_alive(left["container"])
    assert mounts_under([Path(left["workdir"])])
    assert Path(left["record"]).exists()
    assert list(CNI_CACHE_DIR.glob(f"results/*{left['pod']}*"))

    ctd = Containerd(base / "next", node_binaries, image=node_image)
    try:
        ctd.start()
        assert not shim_pids(Path(left["socket"]))
        assert not pid_alive(left["container"])
        assert not mounts_under([Path(left["workdir"])])
        assert not Path(left["workdir"]).exists()
        assert not cgroup_dirs(left["cgroup_parent"])
        assert not Path(left["record"]).exists()
        assert not list(CNI_CACHE_DIR.glob(f"results/*{left['pod']}*"))
    finally:
        ctd.stop()
    assert not mounts_under([base])
    assert not ctd.record_file.exists()
