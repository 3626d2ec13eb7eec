#!/usr/bin/env python3
"""``make up`` / ``make down``: the whole RT-DRA stack left running, to try it yourself.

``up`` starts a supervisor in the background that runs what ``make demo``
runs - etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the
webhook, the extender, the agent, and this machine as a real node (kubelet,
containerd, runc) - and keeps it running until ``down``. The last line ``up``
prints is the path of an admin kubeconfig::

    $ export KUBECONFIG=$(make -s up | tail -n 1)
    $ kubectl create namespace mine
    $ kubectl label namespace mine rt.resource.example.com/enabled=true
    $ kubectl apply -n mine -f my-rt-pod.yaml     # image: the node's local image, imagePullPolicy: Never
    $ make down

``make up INSTALL=kustomize`` (or ``INSTALL=helm``; ``--install``) runs the webhook, the extender and
the agent as a user installs them instead of as local processes: the image built from the Dockerfile
(``hack/image.py``) in pods on the real node, by ``kubectl apply -k`` of a local overlay of
``manifests/`` or ``helm install`` of ``charts/rt-dra`` (``hack/install.py`` says what the local
install changes, and why). Then RT pods may use the image ``rt-dra.local/rt-dra:<version>`` too.

``make up MODE=dra`` (``--mode dra``) brings the node up in DRA mode instead (docs/dra-node.md):
RT pods then ask for a ResourceClaim of the DeviceClass ``rt.resource.example.com``, and the
extender books nothing on the node. ``MODE=cdi`` runs the device plugin + CDI hook path; the
default is ``nri``.

Every process belongs to the supervisor and dies with it (even on SIGKILL);
``down`` asks it to stop (containers first, so the agent releases every
reservation), waits, and cleans up whatever a crash left. The node has no
registry to pull from: pods use the local image (``up`` prints its name),
which has busybox's applets (``sh``, ``sleep``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hack.hostchanges import recover_stale
from hack.procs import kill, pid_alive, pids_matching, tail
from hack.stack import NodeSpec, running_stack

STATE = "playground.json"
READY_TIMEOUT_S = 1800  # a first run builds Kubernetes and the node programs


MODES = ("nri", "cdi", "dra")


def serve(workdir: Path, mode: str = "nri", install: str = "") -> int:
    """The supervisor: start everything, write the state file, wait for SIGTERM, stop everything."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def progress(message: str) -> None:
        print(f"[up {time.strftime('%H:%M:%S')}] {message}", flush=True)

    if install:
        return serve_installed(workdir, install, stop, progress)

    progress("building or reusing the control-plane programs")
    nodes = [NodeSpec("rt-node-0", "deadline", real=True, mode=mode)]
    with running_stack(workdir / "cluster", nodes, progress=progress) as stack:
        cp = stack.cp
        state = {
            "pid": os.getpid(),
            "kubeconfig": str(cp.kubeconfig),
            "server": cp.server,
            "kubectl": str(cp.binaries.kubectl) if cp.binaries and cp.binaries.kubectl else "kubectl",
            "image": stack.image,
            "node": "rt-node-0",
            "mode": mode,
            "logs": [str(cp.logs), str(stack.logs)],
            "pod_logs": str(stack.real["rt-node-0"].pod_logs),
        }
        (workdir / STATE).write_text(json.dumps(state, indent=2) + "\n")
        progress("ready")
        while not stop.wait(1):
            pass
        progress("stopping: containers first, then the agent, extender, webhook, node and control plane")
    with contextlib.suppress(FileNotFoundError):
        (workdir / STATE).unlink()
    progress("stopped")
    return 0


def serve_installed(workdir: Path, method: str, stop: threading.Event, progress: Callable[[str], None]) -> int:
    """``--install kustomize|helm``: the components in pods on the real node, installed as a user does."""
    from hack.install import NODE, Install  # noqa: PLC0415 - builds the image and, for helm, helm

    shutil.rmtree(workdir / "install", ignore_errors=True)  # a previous run's certificates and agent state
    with Install(workdir / "install", method=method, progress=progress) as inst:
        assert inst.cp is not None and inst.node is not None and inst.image is not None
        cp = inst.cp
        state = {
            "pid": os.getpid(),
            "kubeconfig": str(cp.kubeconfig),
            "server": cp.server,
            "kubectl": str(inst.kubectl_binary),
            "image": inst.image.name,
            "node": NODE,
            "mode": f"installed by {method}",
            "logs": [str(cp.logs)],
            "pod_logs": str(inst.node.pod_logs),
        }
        (workdir / STATE).write_text(json.dumps(state, indent=2) + "\n")
        progress("ready")
        while not stop.wait(1):
            pass
        progress("stopping: uninstall, then the node and the control plane")
    with contextlib.suppress(FileNotFoundError):
        (workdir / STATE).unlink()
    progress("stopped")
    return 0


def up(workdir: Path, mode: str = "nri", install: str = "") -> int:
    workdir = workdir.resolve()
    state_path = workdir / STATE
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if pid_alive(int(state["pid"])):
            print(f"already up (supervisor pid {state['pid']})", file=sys.stderr)
            print(state["kubeconfig"])
            return 0
        down(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "up.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", "--dir", str(workdir), "--mode", mode]
            + (["--install", install] if install else []),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives `make up`
        )
    print(f"starting (log: {log}); the first run builds Kubernetes and the node programs", file=sys.stderr)
    deadline = time.monotonic() + READY_TIMEOUT_S
    shown = 0
    while time.monotonic() < deadline:
        lines = log.read_text(errors="replace").splitlines()
        for line in lines[shown:]:
            print(line, file=sys.stderr)
        shown = len(lines)
        if proc.poll() is not None:
            print(f"the supervisor exited ({proc.returncode}):\n{tail(log)}", file=sys.stderr)
            return 1
        if state_path.exists():
            state = json.loads(state_path.read_text())
            print(
                f"up: kube-apiserver {state['server']}, node rt-node-0 ({state['mode']} mode, image {state['image']})",
                file=sys.stderr,
            )
            print(f"container logs: {state['pod_logs']}/<namespace>_<pod>_<uid>/<container>/", file=sys.stderr)
            print(f"kubectl: {state['kubectl']}", file=sys.stderr)
            print(f"export KUBECONFIG={state['kubeconfig']}", file=sys.stderr)
            print(state["kubeconfig"])
            return 0
        time.sleep(0.5)
    print(f"not ready after {READY_TIMEOUT_S}s; stopping", file=sys.stderr)
    down(workdir)
    return 1


def down(workdir: Path, mode: str = "", install: str = "") -> int:
    workdir = workdir.resolve()
    state_path = workdir / STATE
    pid = json.loads(state_path.read_text())["pid"] if state_path.exists() else None
    supervisors = set(pids_matching(f"playground.py serve --dir {workdir}"))
    if pid is not None:
        supervisors.add(int(pid))
    for sup in supervisors:
        kill(sup, None, grace=120)  # it stops its children; SIGKILL after that kills them too (PDEATHSIG)
    for leftover in pids_matching(str(workdir)):
        kill(leftover, None, grace=5)
    recover_stale()  # host changes of a node whose supervisor died without undoing them
    with contextlib.suppress(FileNotFoundError):
        state_path.unlink()
    print(f"down: {workdir} stopped", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "serve"))
    parser.add_argument("--dir", type=Path, default=Path(".rtdra"))
    parser.add_argument("--mode", choices=MODES, default="nri", help="how the real node serves RT pods")
    parser.add_argument(
        "--install", choices=("", "kustomize", "helm"), default="", help="run the components in pods, installed so"
    )
    args = parser.parse_args(argv)
    if args.install and args.mode != "nri":
        parser.error("--install runs the shipped DaemonSet (its default mode); --mode is for the local processes")
    return {"up": up, "down": down, "serve": serve}[args.command](args.dir, args.mode, args.install)


if __name__ == "__main__":
    sys.exit(main())
