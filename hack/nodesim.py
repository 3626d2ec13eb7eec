#!/usr/bin/env python3
"""A node simulator: the kubelet + container runtime stand-in for tests and the demo.

There is no kubelet and no container engine here, so this plays their part for
pods bound to the simulated nodes it is given, as far as RT-DRA is concerned:

- for each container of a newly bound pod it starts a local process (in its
  own session, so it can be stopped as a group);
- to each container that requests ``rt.resource.example.com/dl`` it gives the
  CDI device ``rt.resource.example.com/cpu=deadline``, as kubelet does with
  the agent's device plugin (whose ``Allocate`` answers just that): it
  loads the node's CDI specs (JSON or YAML, from the node's CDI directory),
  applies their ``env`` edits to the process and runs their OCI hooks with a
  real OCI state document on stdin, in the order a runtime does:
  ``createRuntime``, ``createContainer``, ``startContainer`` (status
  ``created``), then ``poststart`` (status ``running``) - with containerd's
  CRI annotations (``io.kubernetes.cri.*``), so the hook can tell the pod and
  container apart;
- a failing hook fails the container as a runtime would: the process is
  killed, ``poststop`` hooks run, and the pod reports the container waiting
  with reason ``RunContainerError`` and the hook's message, plus an Event;
- otherwise the pod is reported ``Running`` with its containers running;
- when the pod is deleted it runs ``poststop`` hooks (status ``stopped``),
  stops the processes, and confirms the deletion (grace period 0), as the
  kubelet does;
- a pod whose start failed is not started again until the pod changes (its
  spec generation or its annotations): its own status report, a relist or
  a requeue must not start processes nobody waits for.

``stop()`` stops the watch and waits for its thread to end before it tears
the pods down, and a handler started before that starts nothing more, so no
process outlives the simulator.

It is test scaffolding, not a product: the hooks, the agent and the API
server it talks to are the real ones.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from rtdra.listwatch import ListWatch, ObjectEvent, watch_objects

log = logging.getLogger("nodesim")


#: The agent's device-plugin resource, and the CDI device its Allocate gives each container requesting it.
DL_RESOURCE = "rt.resource.example.com/dl"
CDI_DEVICE = "rt.resource.example.com/cpu=deadline"
HOOK_ORDER_START = ("createRuntime", "createContainer", "startContainer")
HOOK_TIMEOUT_S = 10.0
#: How long ``stop()`` waits for the watch thread: a watch request (5 s + 10 s) or one pod's hooks.
STOP_JOIN_S = 60.0
#: What each simulated container runs: sleeps, so a real reservation costs no CPU.
DEFAULT_COMMAND = (sys.executable, "-c", "import time\nwhile True: time.sleep(3600)")


@dataclass(frozen=True)
class SimNode:
    name: str
    cdi_dirs: tuple[Path, ...]


@dataclass
class Container:
    name: str
    id: str
    process: subprocess.Popen[bytes] | None
    hooks: Mapping[str, list[Mapping[str, Any]]]
    bundle: Path
    error: str = ""
    stopped: bool = False


@dataclass
class SimPod:
    uid: str
    namespace: str
    name: str
    node: str
    annotations: Mapping[str, str]
    containers: list[Container] = field(default_factory=list)
    #: What the pod was when it was started (:func:`pod_version`): a failed pod is retried only when that changes.
    version: tuple[object, ...] = ()

    @property
    def failed(self) -> bool:
        return any(c.error for c in self.containers)


def pod_version(pod: client.V1Pod) -> tuple[object, ...]:
    """What makes a failed pod worth another start: its spec (generation) and annotations - not its status."""
    return (pod.metadata.generation, sorted((pod.metadata.annotations or {}).items()))


def load_cdi_devices(dirs: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Qualified device name -> merged container edits (spec-level, then device-level)."""
    devices: dict[str, dict[str, Any]] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for path in sorted(d.iterdir()):
            if path.suffix not in (".json", ".yaml", ".yml"):
                continue
            spec = yaml.safe_load(path.read_text())
            if not isinstance(spec, Mapping) or "kind" not in spec:
                continue
            common = spec.get("containerEdits") or {}
            for device in spec.get("devices") or []:
                edits = device.get("containerEdits") or {}
                devices[f"{spec['kind']}={device['name']}"] = {
                    "env": [*(common.get("env") or []), *(edits.get("env") or [])],
                    "hooks": [*(common.get("hooks") or []), *(edits.get("hooks") or [])],
                }
    return devices


def oci_state(pod: SimPod, container: Container, status: str) -> dict[str, Any]:
    """The OCI runtime state a hook receives on stdin, with containerd's CRI annotations."""
    pid = container.process.pid if container.process is not None and status != "stopped" else 0
    return {
        "ociVersion": "1.2.0",
        "id": container.id,
        "status": status,
        "pid": pid,
        "bundle": str(container.bundle),
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": container.name,
            "io.kubernetes.cri.sandbox-id": pod.uid.replace("-", "")[:64],
            "io.kubernetes.cri.sandbox-uid": pod.uid,
            "io.kubernetes.cri.sandbox-name": pod.name,
            "io.kubernetes.cri.sandbox-namespace": pod.namespace,
        },
    }


def run_hooks(pod: SimPod, container: Container, stage: str, status: str) -> None:
    """Run the ``stage`` hooks; raise ``RuntimeError`` with the hook's message if one fails."""
    state = json.dumps(oci_state(pod, container, status)).encode()
    for hook in container.hooks.get(stage, []):
        argv = list(hook.get("args") or [hook["path"]])
        env = dict(item.split("=", 1) for item in hook.get("env") or [])
        timeout = float(hook.get("timeout") or HOOK_TIMEOUT_S)
        try:
            proc = subprocess.run(
                argv, executable=hook["path"], input=state, env=env, capture_output=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RuntimeError(f"{stage} hook {hook['path']}: {err}") from None
        if proc.returncode != 0:
            message = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            reason = message[-1] if message else f"exit status {proc.returncode}"
            raise RuntimeError(f"{stage} hook {hook['path']} failed: {reason}")


class NodeSimulator:
    """Runs the pods bound to ``nodes``; ``start()`` a watch thread, ``stop()`` everything."""

    def __init__(self, api: client.ApiClient, nodes: Sequence[SimNode], command: Sequence[str] = DEFAULT_COMMAND):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.nodes = {n.name: n for n in nodes}
        self.command = tuple(command)
        self.pods: dict[str, SimPod] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # timeout 5 s: an idle watch is re-established often, as kubelet's own relists do.
        self.feed: ListWatch[client.V1Pod, ObjectEvent] = ListWatch(
            "nodesim", self._list, self._watch, on_list=self._sync, on_event=self._on_event, timeout_seconds=5,
            retry_seconds=0.5,
        )  # fmt: skip
        self._workdir = Path(tempfile.mkdtemp(prefix="rtdra-nodesim-"))

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> NodeSimulator:
        self.feed.start()
        return self

    def stop(self) -> None:
        """Stop the watch, wait for its thread, then stop every pod's processes."""
        self._stop.set()
        self.feed.stop(join_seconds=STOP_JOIN_S)
        if self.feed.running:
            log.warning("the watch thread is still running after %.0fs; it stops what it starts", STOP_JOIN_S)
        with self._lock:
            pods = list(self.pods.values())
            self.pods.clear()
        for pod in pods:
            self._teardown(pod)
        with contextlib.suppress(OSError):
            for p in sorted(self._workdir.rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            self._workdir.rmdir()

    def __enter__(self) -> NodeSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the watch ------------------------------------------------------------

    def _list(self) -> tuple[list[client.V1Pod], str]:
        pods = self.core.list_pod_for_all_namespaces()
        return pods.items, pods.metadata.resource_version

    def _watch(self, version: str, timeout_seconds: int) -> Iterator[ObjectEvent]:
        return watch_objects(
            self.core.list_pod_for_all_namespaces,
            resource_version=version,
            timeout_seconds=timeout_seconds,
            request_timeout=10.0,
        )

    def _sync(self, pods: Sequence[client.V1Pod]) -> None:
        for pod in pods:
            self._handle("MODIFIED", pod)

    def _on_event(self, event: ObjectEvent) -> None:
        # The handlers read typed pods, as kubelet's informer hands them out. (kubernetes 37 takes the
        # text and its content type: the old one-argument call raised on every event, so that only
        # relists - after a retry delay each time - brought pods in.)
        typed: client.V1Pod = self.api.deserialize(json.dumps(event.object), "V1Pod", "application/json")
        self._handle(event.type, typed)

    def _handle(self, kind: str, pod: client.V1Pod) -> None:
        node = pod.spec.node_name
        uid = pod.metadata.uid
        if node not in self.nodes or self._stop.is_set():
            return
        with self._lock:
            known = self.pods.get(uid)
        if kind == "DELETED" or pod.metadata.deletion_timestamp is not None:
            if known is not None:
                with self._lock:
                    self.pods.pop(uid, None)
                self._teardown(known)
            if kind != "DELETED":
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(
                        pod.metadata.name,
                        pod.metadata.namespace,
                        grace_period_seconds=0,
                        body=client.V1DeleteOptions(grace_period_seconds=0, preconditions={"uid": uid}),
                    )
            return
        if known is not None and known.failed and known.version != pod_version(pod):
            with self._lock:
                self.pods.pop(uid, None)
            self._teardown(known)
            known = None  # it changed since its start failed: try again, as kubelet would
        if known is None and (pod.status.phase in (None, "Pending")):
            self._start_pod(pod)

    # -- running a pod ----------------------------------------------------------

    def _start_pod(self, pod: client.V1Pod) -> None:
        node = self.nodes[pod.spec.node_name]
        annotations = dict(pod.metadata.annotations or {})
        sim = SimPod(
            pod.metadata.uid,
            pod.metadata.namespace,
            pod.metadata.name,
            node.name,
            annotations,
            version=pod_version(pod),
        )
        with self._lock:
            self.pods[sim.uid] = sim
        devices = load_cdi_devices(node.cdi_dirs)
        failures: list[tuple[str, str]] = []
        for spec in pod.spec.containers:
            if self._stop.is_set():
                break
            container = self._start_container(sim, spec, devices)
            sim.containers.append(container)
            if container.error:
                failures.append((container.name, container.error))
        if self._stop.is_set():  # stop() came while this pod was starting: what started here stops here
            self._teardown(sim)
            return
        self._report(pod, sim, failures)

    def _start_container(self, pod: SimPod, spec: client.V1Container, devices: Mapping[str, Any]) -> Container:
        resources = spec.resources
        requested = {**((resources and resources.requests) or {}), **((resources and resources.limits) or {})}
        wanted = [CDI_DEVICE] if DL_RESOURCE in requested else []
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.update({e.name: e.value or "" for e in spec.env or [] if e.value is not None})
        hooks: dict[str, list[Mapping[str, Any]]] = {}
        missing = [name for name in wanted if name not in devices]
        for name in wanted:
            for item in (devices.get(name) or {}).get("env", []):
                key, _, value = item.partition("=")
                env[key] = value
            for hook in (devices.get(name) or {}).get("hooks", []):
                hooks.setdefault(hook["hookName"], []).append(hook)
        bundle = self._workdir / f"{pod.uid}-{spec.name}"
        bundle.mkdir(parents=True, exist_ok=True)
        container = Container(spec.name, uuid.uuid4().hex, None, hooks, bundle)
        if missing:
            container.error = f"CDI device {', '.join(missing)} is not known on node {pod.node}"
            return container
        # A runtime creates the task stopped, runs the create hooks, then starts it.
        container.process = subprocess.Popen(
            self.command,
            env=env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for stage in HOOK_ORDER_START:
                run_hooks(pod, container, stage, "created")
            run_hooks(pod, container, "poststart", "running")
        except RuntimeError as err:
            container.error = str(err)
            self._stop_container(pod, container)
        return container

    def _stop_container(self, pod: SimPod, container: Container) -> None:
        if container.stopped:
            return
        container.stopped = True
        proc = container.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        try:
            run_hooks(pod, container, "poststop", "stopped")
        except RuntimeError as err:
            log.warning("pod %s/%s: %s", pod.namespace, pod.name, err)

    def _teardown(self, pod: SimPod) -> None:
        for container in list(pod.containers):
            self._stop_container(pod, container)  # a failed one was stopped already: nothing twice

    def _report(self, pod: client.V1Pod, sim: SimPod, failures: Sequence[tuple[str, str]]) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        failed = dict(failures)
        statuses = []
        for c in sim.containers:
            state: dict[str, Any]
            if c.name in failed:
                state = {"waiting": {"reason": "RunContainerError", "message": failed[c.name]}}
            else:
                state = {"running": {"startedAt": now}}
            statuses.append(
                {
                    "name": c.name,
                    "ready": c.name not in failed,
                    "restartCount": 0,
                    "image": "sim",
                    "imageID": "",
                    "containerID": f"sim://{c.id}",
                    "started": c.name not in failed,
                    "state": state,
                }
            )
        ready = "False" if failed else "True"
        body = {
            "status": {
                "phase": "Pending" if failed else "Running",
                "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1",
                "startTime": now,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                    {"type": "Ready", "status": ready, "lastTransitionTime": now},
                ],
                "containerStatuses": statuses,
            }
        }
        try:
            self.core.patch_namespaced_pod_status(sim.name, sim.namespace, body)
            for name, message in failures:
                self._event(pod, "Failed", f"Error: container {name}: {message}", "Warning")
            if not failures:
                self._event(pod, "Started", f"Started {len(sim.containers)} container(s) on simulated node", "Normal")
        except ApiException as err:
            log.warning("pod %s/%s status: %s", sim.namespace, sim.name, err.reason)

    def _event(self, pod: client.V1Pod, reason: str, message: str, kind: str) -> None:
        now = dt.datetime.now(dt.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{pod.metadata.name}.", namespace=pod.metadata.namespace),
            involved_object=client.V1ObjectReference(
                kind="Pod",
                name=pod.metadata.name,
                namespace=pod.metadata.namespace,
                uid=pod.metadata.uid,
                api_version="v1",
            ),
            reason=reason,
            message=message,
            type=kind,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component="kubelet", host=pod.spec.node_name),
        )
        with contextlib.suppress(ApiException):
            self.core.create_namespaced_event(pod.metadata.namespace, event)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument(
        "--node",
        action="append",
        required=True,
        metavar="NAME=CDI_DIR[:CDI_DIR]",
        help="a simulated node and its CDI spec directories (repeatable)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s nodesim %(message)s")
    nodes = []
    for item in args.node:
        name, _, dirs = item.partition("=")
        nodes.append(SimNode(name, tuple(Path(d) for d in dirs.split(":") if d)))
    api = config.new_client_from_config(config_file=args.kubeconfig)
    sim = NodeSimulator(api, nodes).start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
