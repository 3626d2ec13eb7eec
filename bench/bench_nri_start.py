"""Benchmark: a whole container start (CRI create + start) with RT-DRA over NRI, with the hook, without RT-DRA.

Issue 11's goal for it: a container start with RT-DRA <= 1.1x one without.

A private containerd (``hack.runtime.Containerd``, NRI on, runc) runs pods through its CRI with
``crictl``, as kubelet would. Each round runs one block of starts per setting, the blocks in
turn, so load from other work on the machine hits all settings alike:

- **without RT-DRA**: no agent; the pods carry no RT annotation;
- **NRI**: ``rtdra-agent --mode nri`` connected to containerd's NRI socket; each pod carries
  the allocation annotation, and the agent reserves its container at StartContainer;
- **NRI, linux.scheduler**: the same, but the reservation is asked of runc instead (NRI's
  ``linux.scheduler`` adjustment at CreateContainer, OCI ``process.scheduler``) - the
  alternative the agent does not use (see docs/agent.md): measured here to show the cost;
- **CDI hook**: ``rtdra-agent --mode cdi``; each container carries the CDI device, whose
  ``createRuntime`` hook reserves it.

Timed: ``crictl create`` + ``crictl start`` of one container (its pod sandbox is run before the
clock starts and removed after); every RT start is checked to be SCHED_DEADLINE. Root only;
takes the kernel-test lock; leaves nothing behind.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent._generated.nri import api_pb2  # noqa: E402
from agent.backends.deadline import DeadlineBackend  # noqa: E402
from agent.enforce import Enforcer  # noqa: E402
from agent.events import LogEvents  # noqa: E402
from agent.nri.plugin import RtPlugin, granted  # noqa: E402
from agent.nri.stub import Stub  # noqa: E402
from agent.store import FileStore  # noqa: E402
from hack.runtime import Containerd  # noqa: E402
from rtdra import host, names, sched  # noqa: E402
from rtdra.ledger import NodeLedger, PodAllocation, Slot  # noqa: E402

SLOT = Slot(0, 100_000, 10_000_000, 10_000_000)
LOCK_FILE = Path("/run/lock/rtdra-kernel-tests.lock")
CDI_DEVICE = names.CDI_DEVICE_NAME


class SchedulerPlugin(RtPlugin):
    """The alternative: ask runc for SCHED_DEADLINE (NRI linux.scheduler) instead of reserving in-process."""

    def create_container(self, request: api_pb2.CreateContainerRequest) -> api_pb2.CreateContainerResponse:
        reply = super().create_container(request)
        mine = granted(request.pod.annotations).get(request.container.name)
        if mine is not None:
            s = reply.adjust.linux.scheduler
            s.policy = api_pb2.SCHED_DEADLINE
            s.flags.append(api_pb2.SCHED_FLAG_RESET_ON_FORK)
            s.runtime, s.deadline, s.period = mine.runtime_ns, mine.deadline_ns, mine.period_ns
        return reply

    def start_container(self, request: api_pb2.StartContainerRequest) -> None:
        return None  # runc has done it

    def post_start_container(self, request: api_pb2.PostStartContainerRequest) -> None:
        return None


def stats(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))]


class Bench:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.cdi = base / "cdi"
        self.cdi.mkdir()
        self.ctd = Containerd(base / "ctd", cdi_spec_dirs=[self.cdi])
        self.node = "bench"
        self.nas = base / "nas.json"
        self.nas.write_text(json.dumps(NodeLedger(self.node, {0: 1 << 19, 1: 1 << 19}).to_nas()))
        self.store = FileStore(self.node, self.nas)

    def allocate(self, uid: str) -> str:
        self.store.update(
            lambda ledger: NodeLedger(
                self.node,
                (ledger.capacities if ledger else {0: 1 << 19}),
                {uid: PodAllocation(uid, "default", "p", {"rt": (SLOT,)})},
            )
        )
        value = {"cpus": [0], "runtime": SLOT.runtime_ns, "deadline": SLOT.deadline_ns, "period": SLOT.period_ns}
        return json.dumps({"node": self.node, "containers": {"rt": value}})

    def start_once(self, name: str, annotation: str | None, cdi: bool) -> tuple[float, int]:
        uid = uuid.uuid4().hex
        pod = {
            "metadata": {"name": name, "namespace": "default", "uid": uid, "attempt": 0},
            "log_directory": str(self.base / "logs" / name),
            "linux": {
                "cgroup_parent": self.ctd.cgroup_parent,
                "security_context": {"namespace_options": {"network": 0}},
            },
            "annotations": {names.ALLOCATION: self.allocate(uid)} if annotation is not None else {},
        }
        assert self.ctd.image is not None
        ctr: dict[str, Any] = {
            "metadata": {"name": "rt"},
            "image": {"image": self.ctd.image.name},
            "command": ["/bin/sh", "-c", "exec sleep 3600"],
            "log_path": "rt/0.log",
            "linux": {},
        }
        if cdi:
            ctr["CDI_devices"] = [{"name": CDI_DEVICE}]
        pod_json, ctr_json = self.base / "pod.json", self.base / "ctr.json"
        pod_json.write_text(json.dumps(pod))
        ctr_json.write_text(json.dumps(ctr))
        pod_id = self.ctd.crictl("runp", str(pod_json)).strip()
        try:
            start = time.perf_counter()
            ctr_id = self.ctd.crictl("create", pod_id, str(ctr_json), str(pod_json)).strip()
            self.ctd.crictl("start", ctr_id)
            elapsed = (time.perf_counter() - start) * 1000
            pid = int(json.loads(self.ctd.crictl("inspect", "-o", "json", ctr_id))["info"]["pid"])
            policy = sched.sched_getattr(pid).policy
        finally:
            self.ctd.crictl("rmp", "--force", pod_id)
        return elapsed, policy


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-block", type=int, default=6)
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="rtdra-bs-"))
    lock = open(LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run
    fcntl.flock(lock, fcntl.LOCK_EX)
    bench = Bench(base)
    agent: subprocess.Popen[bytes] | None = None
    try:
        bench.ctd.start()
        rows: dict[str, list[float]] = {"plain": [], "nri": [], "sched": [], "hook": []}
        enforcer = Enforcer(bench.store, DeadlineBackend(host.online_cpus()), LogEvents(), base / "prepared.json")
        enforcer.load()
        for _ in range(args.rounds):
            for _ in range(args.per_block):
                rows["plain"].append(bench.start_once("plain", None, cdi=False)[0])
            for key, plugin in (("nri", RtPlugin(enforcer)), ("sched", SchedulerPlugin(enforcer))):
                stub = Stub(bench.ctd.nri_socket, plugin)
                stop = threading.Event()
                runner = threading.Thread(target=stub.run, args=(stop,), daemon=True)
                runner.start()
                if not stub.synchronized.wait(30):
                    raise SystemExit("the plugin did not connect")
                for _ in range(args.per_block):
                    elapsed, policy = bench.start_once(key, "rt", cdi=False)
                    if policy != sched.SCHED_DEADLINE:
                        raise SystemExit(f"{key}: the container is not SCHED_DEADLINE")
                    rows[key].append(elapsed)
                stop.set()
                runner.join(10)
            argv = [sys.executable, "-m", "agent.cli", "--node-name", bench.node, "--nas-file", str(bench.nas)]
            argv += ["--state-dir", str(base / "agent"), "--cdi-dir", str(bench.cdi), "--mode", "cdi"]
            argv += ["--release-on-exit", "--reconcile-interval", "60", "--no-device-plugin"]
            agent = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(600):
                if list(bench.cdi.glob("*.json")):
                    break
                time.sleep(0.05)
            else:
                raise SystemExit("the agent wrote no CDI spec")
            for _ in range(args.per_block):
                elapsed, policy = bench.start_once("hook", "rt", cdi=True)
                if policy != sched.SCHED_DEADLINE:
                    raise SystemExit("hook: the container is not SCHED_DEADLINE")
                rows["hook"].append(elapsed)
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
            agent = None
            for f in bench.cdi.glob("*.json"):
                f.unlink()
        plain, _ = stats(rows["plain"])
        labels = {
            "plain": "without RT-DRA",
            "nri": "RT-DRA over NRI (StartContainer)",
            "sched": "NRI linux.scheduler (runc applies)",
            "hook": "RT-DRA CDI hook",
        }
        print(f"{'container create + start':<40}{'median ms':>10}{'p99 ms':>10}{'x plain':>9}")
        for key, label in labels.items():
            median, p99 = stats(rows[key])
            print(f"{label:<40}{median:>10.1f}{p99:>10.1f}{median / plain:>9.2f}")
        print(f"rounds: {args.rounds} x {args.per_block} starts per setting, blocks in turn")
    finally:
        if agent is not None:
            agent.kill()
            agent.wait()
        bench.ctd.stop()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
