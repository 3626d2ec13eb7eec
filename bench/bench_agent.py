"""Benchmark: time from hook start to reservation applied, against ``chrt -d -p``.

Each run starts the hook process exactly as the runtime would - the
``createRuntime`` command line of the CDI spec the agent wrote, OCI state on
stdin - and stops the clock when it exits: by then the agent has applied the
reservation. The floor is ``chrt -d -T <runtime> -D <deadline> -P <period> -p 0
<pid>`` on the same task, timed the same way. Two more rows split the cost:
a bare ``python -S -I -c pass`` (the interpreter's start-up, which no Python
hook can beat) and the same hook answered by a do-nothing server (the hook
without the agent's work). All rows are measured interleaved, run by run, so
load from other processes hits them alike. Root only.

The seed driver's node plugin: median 32.6 ms. Goal: median < 5 ms and within
2x of the floor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent import cdi  # noqa: E402
from rtdra import host, sched, tasks  # noqa: E402
from rtdra.ledger import NodeLedger, PodAllocation, Slot  # noqa: E402

RUNTIME, DEADLINE, PERIOD = 100_000, 10_000_000, 10_000_000
ANNOTATIONS = {
    "io.kubernetes.cri.sandbox-uid": "u",
    "io.kubernetes.cri.sandbox-namespace": "d",
    "io.kubernetes.cri.sandbox-name": "p",
    "io.kubernetes.cri.container-name": "c",
}


def timed(argv: list[str], stdin: bytes | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.decode().strip()}")
    return elapsed


def stats(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))]


class _Null(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while self.request.recv(65536):
            pass
        self.request.sendall(b"ok nothing done\n")


class NullServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def start_agent(tmp: Path) -> subprocess.Popen[bytes]:
    nas = tmp / "nas.json"
    slot = Slot(0, RUNTIME, DEADLINE, PERIOD)
    ledger = NodeLedger("bench", {0: 1 << 19}, {"u": PodAllocation("u", "d", "p", {"c": (slot,)})})
    nas.write_text(json.dumps(ledger.to_nas()))
    argv = [sys.executable, "-m", "agent.cli", "--node-name", "bench", "--nas-file", str(nas)]
    argv += ["--state-dir", str(tmp / "s"), "--cdi-dir", str(tmp / "cdi"), "--release-on-exit"]
    argv += ["--reconcile-interval", "60", "--no-device-plugin"]  # not this host's kubelet's
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rtdra-bench-"))
    agent = start_agent(tmp)
    null = NullServer(str(tmp / "null.sock"), _Null)
    threading.Thread(target=null.serve_forever, daemon=True).start()
    task = subprocess.Popen(["sleep", "3600"])
    try:
        spec_file = cdi.spec_path(tmp / "cdi", "bench")
        for _ in range(600):
            if spec_file.exists() or agent.poll() is not None:
                break
            time.sleep(0.05)
        if not spec_file.exists():
            raise SystemExit("the agent did not start (no CDI spec)")
        hooks = json.loads(spec_file.read_text())["devices"][0]["containerEdits"]["hooks"]
        hook = next(h["args"] for h in hooks if h["hookName"] == "createRuntime")
        release = next(h["args"] for h in hooks if h["hookName"] == "poststop")
        to_null = [*hook[: hook.index("--socket") + 1], str(tmp / "null.sock")]
        tasks.wait_blocked(task.pid)
        chrt = ["chrt", "-d", "-T", str(RUNTIME), "-D", str(DEADLINE), "-P", str(PERIOD), "-p", "0", str(task.pid)]
        bare = [sys.executable, "-S", "-I", "-c", "pass"]
        rows: dict[str, list[float]] = {"floor": [], "python": [], "null": [], "hook": []}
        for i in range(args.runs):
            state = json.dumps({"ociVersion": "1.2.0", "id": f"c{i}", "pid": task.pid, "annotations": ANNOTATIONS})
            rows["hook"].append(timed(hook, state.encode()))
            if not sched.sched_getattr(task.pid).is_deadline:
                raise SystemExit("the hook succeeded but the task is not SCHED_DEADLINE")
            timed(release, state.encode())
            rows["floor"].append(timed(chrt))
            sched.set_other(task.pid)
            host.rebuild_root_domains()  # a blocked task leaving SCHED_DEADLINE leaks its bandwidth (rtdra.host)
            rows["python"].append(timed(bare))
            rows["null"].append(timed(to_null, state.encode()))
        fm, _ = stats(rows["floor"])
        print(f"{'path':<40}{'median ms':>10}{'p99 ms':>10}{'x floor':>9}")
        labels = {
            "floor": "chrt -d -p (floor)",
            "python": "python -S -I -c pass (interpreter)",
            "null": "rtdra-hook -> do-nothing server",
            "hook": "rtdra-hook -> rtdra-agent (reserved)",
        }
        for key, label in labels.items():
            median, p99 = stats(rows[key])
            print(f"{label:<40}{median:>10.2f}{p99:>10.2f}{median / fm:>9.2f}")
        print(f"{'seed driver node plugin':<40}{32.6:>10.2f}{'':>10}{32.6 / fm:>9.2f}")
        print(f"runs: {args.runs}, interleaved; hook: {' '.join(hook[:4])} ...; goal: median < 5 ms and <= 2x floor")
    finally:
        task.kill()
        task.wait()
        agent.terminate()
        agent.wait()
        null.shutdown()
        null.server_close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
