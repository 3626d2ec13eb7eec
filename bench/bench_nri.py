"""Benchmark: the runtime's NRI call to reservation applied, against the floors, in one run.

A real ``rtdra-agent --mode nri`` (backend ``deadline``, NAS in a file) is dialed into a unix
socket this script listens on; the script plays the runtime (``hack/fake_nri.py``, the same
messages and framing as NRI v0.12.3) and times, from sending the request to receiving the
answer - by which time the reservation is in the kernel:

- **NRI StartContainer**: the call containerd makes between creating and starting a task,
  where the agent applies the reservation (a fresh container id each run);
- **NRI PostStartContainer**: the call right after, which finds the reservation in place;
- **rtdra-hook**: the CDI hook path for the same reservation, run as a runtime runs it;
- the floors: ``sched_setattr`` as a bare syscall from this process, and ``chrt -d -p``
  (the floor ``bench_agent.py`` uses and issue 11's goal refers to).

All rows are measured interleaved, run by run, on the same sleeping task, which is released
(and the root domains rebuilt) between runs outside the clock. The agent keeps its state on
tmpfs (``/dev/shm``), as ``/var/run`` is on a node. Root only.

Goal (issue 11): NRI median < 2 ms and <= 2x the ``chrt`` floor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent import cdi  # noqa: E402
from agent._generated.nri import api_pb2  # noqa: E402
from hack.fake_nri import FakeRuntime  # noqa: E402
from rtdra import host, names, sched  # noqa: E402
from rtdra.ledger import NodeLedger, PodAllocation, Slot  # noqa: E402

RUNTIME, DEADLINE, PERIOD = 100_000, 10_000_000, 10_000_000
#: Before each timed start: the agent publishes its records a moment after a release, and a lone
#: container start finds it idle - not in the middle of publishing the previous row's release.
SETTLE_S = 0.05
ALLOCATION = json.dumps(
    {"node": "bench", "containers": {"c": {"cpus": [0], "runtime": RUNTIME, "deadline": DEADLINE, "period": PERIOD}}}
)
ANNOTATIONS = {
    "io.kubernetes.cri.sandbox-uid": "u",
    "io.kubernetes.cri.sandbox-namespace": "d",
    "io.kubernetes.cri.sandbox-name": "p",
    "io.kubernetes.cri.container-name": "c",
}


def stats(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def timed_run(argv: list[str], stdin: bytes | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.decode().strip()}")
    return elapsed


def start_agent(tmp: Path, nri_socket: Path) -> subprocess.Popen[bytes]:
    slot = Slot(0, RUNTIME, DEADLINE, PERIOD)
    ledger = NodeLedger("bench", {0: 1 << 19}, {"u": PodAllocation("u", "d", "p", {"c": (slot,)})})
    (tmp / "nas.json").write_text(json.dumps(ledger.to_nas()))
    argv = [sys.executable, "-m", "agent.cli", "--node-name", "bench", "--nas-file", str(tmp / "nas.json")]
    argv += ["--state-dir", str(tmp / "s"), "--cdi-dir", str(tmp / "cdi"), "--release-on-exit"]
    argv += ["--reconcile-interval", "60", "--mode", "nri", "--nri-socket", str(nri_socket), "--no-device-plugin"]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def release(pid: int) -> None:
    sched.set_other(pid)
    host.rebuild_root_domains()  # a blocked task leaving SCHED_DEADLINE leaks its bandwidth (rtdra.host)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    # The agent's state on tmpfs, as /var/run is on a node: on this machine's ext4 the state file's
    # write-and-rename alone costs ~4 ms (ext4 flushes a file renamed over another).
    tmp = Path(tempfile.mkdtemp(prefix="rtdra-bench-nri-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp / "nri.sock"))
    listener.listen(1)
    listener.settimeout(60)
    agent = start_agent(tmp, tmp / "nri.sock")
    task = subprocess.Popen(["sleep", "3600"])
    runtime: FakeRuntime | None = None
    try:
        conn, _ = listener.accept()
        runtime = FakeRuntime(conn)
        runtime.handshake()
        spec_file = cdi.spec_path(tmp / "cdi", "bench")
        for _ in range(600):
            if spec_file.exists() or agent.poll() is not None:
                break
            time.sleep(0.05)
        hooks = json.loads(spec_file.read_text())["devices"][0]["containerEdits"]["hooks"]
        hook = next(h["args"] for h in hooks if h["hookName"] == "createRuntime")
        hook_release = next(h["args"] for h in hooks if h["hookName"] == "poststop")
        host.wait_blocked(task.pid)
        pod = api_pb2.PodSandbox(id="sb", uid="u", name="p", namespace="d", annotations={names.ALLOCATION: ALLOCATION})
        attr = sched.deadline(RUNTIME, DEADLINE, PERIOD)
        chrt = ["chrt", "-d", "-T", str(RUNTIME), "-D", str(DEADLINE), "-P", str(PERIOD), "-p", "0", str(task.pid)]
        rows: dict[str, list[float]] = {"syscall": [], "chrt": [], "start": [], "poststart": [], "hook": []}
        for i in range(args.runs):
            ctr = api_pb2.Container(id=f"c{i}", pod_sandbox_id="sb", name="c", pid=task.pid)
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            runtime.call("StartContainer", api_pb2.StartContainerRequest(pod=pod, container=ctr), api_pb2.Empty())
            rows["start"].append((time.perf_counter() - start) * 1000)
            if not sched.sched_getattr(task.pid).is_deadline:
                raise SystemExit("StartContainer was answered but the task is not SCHED_DEADLINE")
            start = time.perf_counter()
            runtime.call(
                "PostStartContainer", api_pb2.PostStartContainerRequest(pod=pod, container=ctr), api_pb2.Empty()
            )
            rows["poststart"].append((time.perf_counter() - start) * 1000)
            runtime.call(
                "StopContainer", api_pb2.StopContainerRequest(pod=pod, container=ctr), api_pb2.StopContainerResponse()
            )

            state = json.dumps({"ociVersion": "1.2.0", "id": f"h{i}", "pid": task.pid, "annotations": ANNOTATIONS})
            time.sleep(SETTLE_S)
            rows["hook"].append(timed_run(hook, state.encode()))
            timed_run(hook_release, state.encode())

            start = time.perf_counter()
            sched.sched_setattr(task.pid, attr)
            rows["syscall"].append((time.perf_counter() - start) * 1000)
            release(task.pid)
            rows["chrt"].append(timed_run(chrt))
            release(task.pid)
        floor, _ = stats(rows["chrt"])
        labels = {
            "syscall": "sched_setattr syscall (in-process)",
            "chrt": "chrt -d -p (floor)",
            "start": "NRI StartContainer -> reserved",
            "poststart": "NRI PostStartContainer (already held)",
            "hook": "rtdra-hook -> rtdra-agent (reserved)",
        }
        print(f"{'path':<40}{'median ms':>10}{'p99 ms':>10}{'x floor':>9}")
        for key, label in labels.items():
            median, p99 = stats(rows[key])
            print(f"{label:<40}{median:>10.3f}{p99:>10.3f}{median / floor:>9.2f}")
        print(f"runs: {args.runs}, interleaved; floor = chrt; goal: NRI median < 2 ms and <= 2x floor")
    finally:
        if runtime is not None:
            runtime.close()
        listener.close()
        task.kill()
        task.wait()
        agent.terminate()
        agent.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
