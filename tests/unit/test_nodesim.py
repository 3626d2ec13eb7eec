"""The node simulator (hack/nodesim.py) starts nothing after stop() and no failed pod twice.

Its watch is fed by a stand-in for the API (no server): a pod list and a
queue of watch events. The containers are real processes that write their
PID to a directory, and the CDI hooks are real shell commands, so what is
asserted is what outlives the simulator.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hack import nodesim  # noqa: E402
from hack.nodesim import NodeSimulator, SimNode  # noqa: E402

DL = "rt.resource.example.com/dl"


class Stream:
    """One watch response: the queued events, then the end of the watch when none comes for a while."""

    def __init__(self, events: queue.Queue[dict[str, Any]]) -> None:
        self.events = events

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        while True:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                return
            yield (json.dumps(event) + "\n").encode()

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class Api:
    """``CoreV1Api`` as the simulator uses it."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.reported: list[str] = []

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            return Stream(self.events)
        body = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"}, "items": self.pods}
        return client.ApiClient().deserialize(json.dumps(body), "V1PodList", "application/json")

    def patch_namespaced_pod_status(self, name: str, namespace: str, body: Any) -> None:
        self.reported.append(f"{name}:{body['status']['phase']}")

    def create_namespaced_event(self, namespace: str, body: Any) -> None:
        pass


def pod(name: str, *, rt: bool, annotations: dict[str, str] | None = None, version: str = "5") -> dict[str, Any]:
    resources = {"requests": {DL: "1"}, "limits": {DL: "1"}} if rt else {}
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "generation": 1,
            "resourceVersion": version,
            "annotations": annotations or {},
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "sim", "resources": resources}]},
        "status": {"phase": "Pending"},
    }


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A CDI directory whose device's createRuntime hook counts its runs, waits for a gate file and fails.

    Yields (gate, count, pids): a container process writes its PID into ``pids``.
    """
    cdi, pids = tmp_path / "cdi", tmp_path / "pids"
    cdi.mkdir()
    pids.mkdir()
    gate, count = tmp_path / "gate", tmp_path / "count"
    script = f"echo run >> {count}; while [ ! -e {gate} ]; do sleep 0.05; done; echo refused >&2; exit 1"
    hook = {"hookName": "createRuntime", "path": "/bin/sh", "args": ["sh", "-c", script], "env": ["PATH=/usr/bin:/bin"]}
    spec = {
        "cdiVersion": "0.6.0",
        "kind": "rt.resource.example.com/cpu",
        "devices": [{"name": "deadline", "containerEdits": {"hooks": [hook]}}],
    }
    (cdi / "rtdra.json").write_text(json.dumps(spec))
    yield gate, count, pids
    for pid in alive(pids):  # what a failing test leaked
        os.kill(pid, 9)


def alive(pids: Path) -> list[int]:
    running = []
    for entry in pids.iterdir():
        try:
            os.kill(int(entry.name), 0)
        except ProcessLookupError:
            continue
        running.append(int(entry.name))
    return running


def simulator(api: Api, cdi: Path, pids: Path) -> NodeSimulator:
    command = [
        sys.executable,
        "-c",
        "import os,sys,time; open(os.path.join(sys.argv[1], str(os.getpid())), 'w'); time.sleep(60)",
    ]
    sim = NodeSimulator(client.ApiClient(), [SimNode("n1", (cdi,))], command=[*command, str(pids)])
    sim.core = api  # type: ignore[assignment]
    return sim


def wait_for(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_no_process_outlives_stop_even_when_a_pod_is_still_starting(
    node: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, count, pids = node
    monkeypatch.setattr(nodesim, "STOP_JOIN_S", 1.0, raising=False)  # the hook outlasts stop()'s wait
    api = Api([pod("failing", rt=True), pod("next", rt=False)])
    sim = simulator(api, tmp_path / "cdi", pids).start()
    wait_for(count.exists, "the first pod's hook to run")

    stopper = threading.Thread(target=sim.stop)
    stopper.start()
    stopper.join(timeout=15)  # it returns while the watch thread still waits in the hook
    gate.touch()  # the hook fails now; the watch thread goes on
    wait_for(lambda: not stopper.is_alive() and not sim.feed.running, "the simulator and its thread to end")
    time.sleep(0.5)  # a process started late has written its PID by now

    assert alive(pids) == []  # the failing pod's process is stopped, and "next" was never started
    assert api.reported == []  # nothing was reported after stop()


def test_a_pod_whose_start_failed_is_started_again_only_when_it_changes(
    node: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    gate, count, pids = node
    gate.touch()  # the hook refuses at once
    failing = pod("failing", rt=True)
    api = Api([failing])
    sim = simulator(api, tmp_path / "cdi", pids).start()
    try:
        wait_for(lambda: api.reported == ["failing:Pending"], "the failed start to be reported")
        # Its own status report, and a requeue-like touch of its status, come back as events: no new start.
        api.events.put(
            {"type": "MODIFIED", "object": {**failing, "metadata": {**failing["metadata"], "resourceVersion": "6"}}}
        )
        api.events.put({"type": "ADDED", "object": pod("marker", rt=False, version="7")})
        wait_for(lambda: "marker:Running" in api.reported, "the marker pod to start")
        assert count.read_text().count("run") == 1

        changed = pod("failing", rt=True, annotations={"example.com/fixed": "yes"}, version="8")
        api.events.put({"type": "MODIFIED", "object": changed})
        wait_for(lambda: count.read_text().count("run") == 2, "the changed pod to be started again")
        wait_for(lambda: api.reported == ["failing:Pending", "marker:Running", "failing:Pending"], "its report")
    finally:
        sim.stop()
    assert alive(pids) == []
