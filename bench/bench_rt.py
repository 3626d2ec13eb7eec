"""Benchmark: the guarantee - periodic RT jobs on the real node, with CPU hogs, RT-DRA pod against a plain pod.

Everything runs as pods through RT-DRA's normal path on the real node (upstream
kubelet + containerd + runc on this machine, the agent in NRI mode; see
``hack/node.py``). The workload is ``rt-app`` (Debian's 1.0; image
``rt-dra.local/rt-bench:1``, ``hack/bench_image.py``): one worker thread that
every period P runs a fixed amount of CPU work W (a loop count, the same in
every scenario) and then sleeps until its next release on an absolute timer.
rt-app logs every job; from its log (columns ``slack``, ``c_period``, ``end``,
``wu_lat``) each job's release is ``t_next - P`` and its completion
``t_next - slack`` (``t_next`` = the next release, ``end - wu_lat``), so its
response time is ``P - slack``; a job misses when that exceeds its relative
deadline D. The interference is ``stress-ng --cpu 1`` in twice as many plain
pods as the node has CPUs (more hogs than CPUs).

Scenarios (each runs its pods at once, then deletes them):

- ``plain, idle``: the workload as a plain pod, no hogs (the floor);
- ``RT-DRA, idle``: as an RT-DRA pod, no hogs;
- ``plain + hogs`` and ``RT-DRA + hogs``: the same under the hogs;
- ``at capacity + hogs``: RT-DRA pods whose bandwidths add up to the node's
  capacity as the agent measured it (the NodeAllocationState), all running
  their workloads at once;
- ``D<P at the EDF limit + hogs``: RT-DRA pods with ``deadline = P/2`` and the
  largest runtime the extender's EDF test (``rtdra/edf.py``) admits.

At capacity and at the EDF limit the bench also shows that the extender
refuses one more small pod (it stays Pending, unschedulable).

Keeping rt-app under the AGENT's reservation: rt-app runs its periodic work in
a thread it creates; the agent puts the container's main thread in the first
slot at container start and the reconcile loop gives a new thread the next
FREE slot. So the RT pods ask for ``cpus=2`` (two slots: rt-app's main thread,
which only waits, and its worker), the worker's first job is delayed beyond the
reconcile interval, and rt-app is told ``SCHED_OTHER`` with priority 0 -
rt-app 1.0 then leaves its thread's policy alone until its last job. The bench
checks with ``sched_getattr`` that the worker thread is SCHED_DEADLINE with the
pod's parameters before its first release and throughout the run, and fails
otherwise. After its last job rt-app tries to set SCHED_OTHER itself; the
kernel refuses (EPERM: the reservation carries SCHED_FLAG_RESET_ON_FORK, which
only CAP_SYS_NICE may clear), so an RT pod's rt-app exits 1 - expected, checked.

Output: a table per scenario, the ratio of the plain pod's worst-case response
to the RT-DRA pod's under the same hogs, every job in a CSV and the response
time CDFs in a PNG (matplotlib: ``pip install -e '.[bench]'``; without it, no
plot) - all in ``--out``. Everything it started is deleted, and it checks that
no deadline task nor rt-app/stress-ng process is left. Root only.

Goal: 0 deadline misses for every RT-DRA pod in every scenario; plain pods
under the same hogs miss or respond >= 4x slower at the worst case.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import sched_trace  # noqa: E402
from hack.bench_image import build_bench_image  # noqa: E402
from hack.runtime import CRI_NAMESPACE  # noqa: E402
from hack.stack import NodeSpec, Stack, running_stack, wait_for  # noqa: E402
from rtdra import names, sched  # noqa: E402
from rtdra.bandwidth import BW_UNIT, NSEC_PER_USEC, bandwidth, format_ns, max_runtime, percent  # noqa: E402
from rtdra.fit import fits_on_cpu  # noqa: E402
from rtdra.ledger import NodeLedger, Slot  # noqa: E402

NODE = NodeSpec("rt-node-0", "deadline", real=True, mode="nri")
NS = "bench-rt"
CONTAINER = "app"
#: rt-app names its worker thread after the task (pthread_setname_np): how the bench finds it.
WORKER = "job"
#: Where the pod sees the bench's directory (a hostPath under the bench's workdir).
MOUNT = "/bench"
#: The agent's reconcile loop runs every 2 s by default (agent --reconcile-interval); the worker's first
#: release comes after this, so that it is under its reservation from its first job on (checked).
START_DELAY_S = 5.0
#: A hog never outlives this, even if the bench were killed before deleting it.
HOG_TIMEOUT_S = 900
EPERM_LINE = "pthread_setschedparam: Operation not permitted"
#: Reservations of the capacity and EDF-limit scenarios get at least this many times W of runtime
#: (``--budget-over-work``). W is calibrated on the best case (the least time the loop took); on this 2-vCPU VM
#: the same work took up to 2.5x that (W = 1 ms: 1.0 ms best, 1.4 ms on average, over 2 ms at worst), and a job
#: that needs more CPU than its runtime is throttled by the kernel until its next period: it misses, by design
#: (docs/benchmark-rt.md, "Findings").
BUDGET_OVER_WORK = 4.0


# --------------------------------------------------------------------------- rt-app: config and log
def rtapp_config(
    basename: str, *, jobs: int, period_us: int, work_us: int, delay_us: int, ns_per_loop: int
) -> dict[str, Any]:
    """An rt-app 1.0 config: one worker ``job`` that runs ``work_us`` of calibrated work every ``period_us``.

    ``default_policy`` SCHED_OTHER with priority (nice) 0: rt-app sets no policy on its thread (it would only
    call setpriority for a non-zero nice), so the thread keeps what the agent gives it. No ``log_size``: each
    job is written to ``<logdir>/<basename>-job-0.log`` as it ends (stdio-buffered). The timer is absolute:
    releases stay on the grid ``t0 + i*P`` whatever a job's lateness.
    """
    return {
        "global": {
            "calibration": ns_per_loop,
            "default_policy": "SCHED_OTHER",
            "logdir": MOUNT,
            "log_basename": basename,
            "lock_pages": False,  # mlockall needs CAP_IPC_LOCK, which a container has not
        },
        "tasks": {
            WORKER: {
                "loop": jobs,
                "delay": delay_us,
                "phases": {
                    "p": {
                        "loop": 1,
                        "run": work_us,
                        "timer": {"ref": "unique", "period": period_us, "mode": "absolute"},
                    }
                },
            }
        },
    }


@dataclass(frozen=True, slots=True)
class Job:
    """One job of the periodic workload, times in CLOCK_MONOTONIC microseconds."""

    release_us: int
    completion_us: int
    deadline_us: int  # relative
    start_us: int  # when it began to run (its thread woke up, or the previous job ended)
    run_us: int  # the wall time of its work (rt-app's ``run`` column)

    @property
    def response_us(self) -> int:
        return self.completion_us - self.release_us

    @property
    def met(self) -> bool:
        return self.response_us <= self.deadline_us


def parse_rtapp_log(text: str, deadline_us: int) -> list[Job]:
    """The jobs of an rt-app 1.0 log (``#idx perf run period start end rel_st slack c_duration c_period wu_lat``).

    For a phase ``run; timer`` with an absolute timer, job i is released at ``t0 + i*P`` and its timer event
    computes ``slack`` = next release - completion, so its response time is exactly ``P - slack``
    (``c_period`` = P). ``t0`` comes from the jobs that slept until their next release: it is ``end - wu_lat``
    (``end`` is taken right after the wake-up, ``wu_lat`` = wake-up - release); a late job does not sleep,
    and then ``end`` is its completion: next release = ``end + slack``.
    """
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 11:
            raise ValueError(f"not an rt-app 1.0 log line: {line!r}")
        rows.append([int(parts[i]) for i in (2, 4, 5, 7, 9, 10)])
    if not rows:
        return []
    period = rows[0][4]
    if any(r[4] != period for r in rows):
        raise ValueError("the log's jobs have different periods")
    firsts = sorted(
        (end - wu_lat if slack > 0 else end + slack) - (i + 1) * period
        for i, (_run, _start, end, slack, _c_period, wu_lat) in enumerate(rows)
    )
    t0 = firsts[len(firsts) // 2]
    jobs = []
    for i, (run, start, _end, slack, _c_period, _wu_lat) in enumerate(rows):
        release = t0 + i * period
        jobs.append(Job(release, release + period - slack, deadline_us, start, run))
    return jobs


def ns_per_loop_of(text: str) -> int:
    """The calibration from a log run with ``calibration: 1``: the least ns per loop any job took (rounded)."""
    best = math.inf
    for line in text.splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#") and int(parts[1]) > 0:
            best = min(best, int(parts[2]) * 1000 / int(parts[1]))
    if best is math.inf:
        raise ValueError("no job in the calibration log")
    return max(1, round(best))


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True, slots=True)
class Stats:
    jobs: int
    misses: int
    p50_us: float
    p99_us: float
    max_us: int
    deadline_us: int

    @property
    def max_over_deadline(self) -> float:
        return self.max_us / self.deadline_us


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation between closest ranks."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def stats_of(jobs: Sequence[Job]) -> Stats:
    if not jobs:
        raise ValueError("no jobs")
    responses = sorted(j.response_us for j in jobs)
    return Stats(
        len(jobs),
        sum(not j.met for j in jobs),
        percentile(responses, 0.5),
        percentile(responses, 0.99),
        responses[-1],
        max(j.deadline_us for j in jobs),
    )


# --------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Workload:
    """One workload pod: plain (``rt`` None) or RT-DRA (``rt``: the container annotation's value)."""

    name: str
    rt: str | None = None
    runtime_ns: int = 0
    deadline_ns: int = 0
    period_ns: int = 0

    @property
    def kind(self) -> str:
        return "RT-DRA" if self.rt else "plain"


@dataclass
class Scenario:
    key: str
    title: str
    pods: list[Workload]
    hogs: bool
    #: A pod the extender must refuse once ``pods`` are placed (the node is full): its annotation value.
    probe: str | None = None
    notes: list[str] = field(default_factory=list)
    jobs: dict[str, list[Job]] = field(default_factory=dict)
    #: Pod -> the traced cause of each missed job (``bench/sched_trace.explain``).
    causes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rt(self) -> bool:
        return all(p.rt for p in self.pods)


def rt_workload(name: str, runtime_ns: int, period_ns: int, deadline_ns: int | None = None) -> Workload:
    value = f"runtime={format_ns(runtime_ns)},period={format_ns(period_ns)}"
    if deadline_ns is not None and deadline_ns != period_ns:
        value += f",deadline={format_ns(deadline_ns)}"
    value += ",cpus=2"  # rt-app's main thread + its worker (see the module docstring)
    return Workload(name, value, runtime_ns, deadline_ns or period_ns, period_ns)


def fill_to_capacity(capacity: int, period_ns: int, pods: int) -> list[int]:
    """Runtimes (ns) of ``pods`` reservations of ``period_ns`` whose bandwidths add up to at most ``capacity``,
    with less than one more nanosecond of runtime left (the last one takes the rest)."""
    share = capacity // pods
    return [max_runtime(share, period_ns)] * (pods - 1) + [max_runtime(capacity - share * (pods - 1), period_ns)]


def edf_limit(capacity: int, period_ns: int, deadline_ns: int, pods: int) -> int:
    """The largest runtime (ns) such that ``pods`` equal constrained reservations still fit one CPU of
    ``capacity`` by the extender's own test (``rtdra.fit.fits_on_cpu``, the EDF demand test)."""
    lo, hi = 0, deadline_ns
    while lo < hi:
        mid = (lo + hi + 1) // 2
        slots = [Slot(0, mid, deadline_ns, period_ns)] * pods
        if fits_on_cpu(slots[:-1], slots[-1], capacity):
            lo = mid
        else:
            hi = mid - 1
    return lo


# --------------------------------------------------------------------------- pods
def pod_body(
    stack: Stack, image: str, name: str, command: list[str], hostdir: Path, rt: str | None = None
) -> dict[str, Any]:
    spec = stack.pod_spec(
        [
            {
                "name": CONTAINER,
                "image": image,
                "command": command,
                "volumeMounts": [{"name": "bench", "mountPath": MOUNT}],
            }
        ]
    )
    spec["restartPolicy"] = "Never"
    spec["volumes"] = [{"name": "bench", "hostPath": {"path": str(hostdir), "type": "Directory"}}]
    meta: dict[str, Any] = {"name": name, "labels": {"app": "rt-bench"}}
    if rt is not None:
        meta["annotations"] = {f"{names.CONTAINER_PREFIX}{CONTAINER}": rt}
    return {"metadata": meta, "spec": spec}


def delete_pods(core: client.CoreV1Api, pod_names: Iterable[str], timeout: float = 120) -> None:
    pod_names = list(pod_names)
    for name in pod_names:
        try:
            core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
        except client.ApiException as err:
            if err.status != 404:
                raise
    wait_for(
        f"pods {', '.join(pod_names)} gone",
        lambda: not {p.metadata.name for p in core.list_namespaced_pod(NS).items} & set(pod_names),
        timeout=timeout,
    )


def container_state(core: client.CoreV1Api, name: str) -> client.V1ContainerState | None:
    pod = core.read_namespaced_pod(name, NS)
    for status in pod.status.container_statuses or []:
        if status.name == CONTAINER:
            return status.state
    return None


def worker_tid(pid: int) -> int | None:
    for tid in sched.threads_of(pid):
        try:
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        if comm == WORKER:
            return tid
    return None


class Fail(RuntimeError):
    """The bench cannot vouch for its figures (the measured thread was not where it must be)."""


@dataclass
class Watch:
    """What the bench saw of one workload pod while it ran."""

    workload: Workload
    pid: int = 0
    tid: int = 0
    #: CLOCK_MONOTONIC µs when the worker was first seen in its final policy (SCHED_DEADLINE for RT-DRA pods).
    seen_us: int = 0
    samples: int = 0
    #: The worker's CPU time (``/proc/.../schedstat``, ns) when first seen and at the last sample, and when that was.
    cpu_first_ns: int = 0
    cpu_last_ns: int = 0
    last_us: int = 0

    def cpu_per_job_us(self, jobs: Sequence[Job]) -> float:
        """The worker's average CPU time per job between the first and the last sample."""
        done = sum(self.seen_us <= j.completion_us <= self.last_us for j in jobs)
        return (self.cpu_last_ns - self.cpu_first_ns) / NSEC_PER_USEC / done if done else math.nan

    def check(self) -> None:
        """Sample the worker's policy; raise :class:`Fail` if an RT-DRA worker is not under its reservation."""
        if not self.tid:
            return
        try:
            attr = sched.sched_getattr(self.tid)
        except sched.NoSuchTask:
            return
        w = self.workload
        if not Path(f"/proc/{self.pid}/task/{self.tid}").exists():
            return
        if w.rt:
            want = (w.runtime_ns, w.deadline_ns, w.period_ns)
            if not attr.is_deadline:
                if self.seen_us:
                    raise Fail(f"{w.name}: worker thread {self.tid} left SCHED_DEADLINE during the run")
                return
            got = (attr.runtime_ns, attr.deadline_ns, attr.period_ns)
            if got != want:
                raise Fail(f"{w.name}: worker thread {self.tid} has deadline parameters {got}, not the pod's {want}")
        elif attr.policy != sched.SCHED_OTHER:
            raise Fail(f"{w.name}: plain worker thread {self.tid} runs under {attr.policy_name}")
        try:
            cpu_ns = int(Path(f"/proc/{self.pid}/task/{self.tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        now_us = time.monotonic_ns() // NSEC_PER_USEC
        if not self.seen_us:
            self.seen_us, self.cpu_first_ns = now_us, cpu_ns
        self.cpu_last_ns, self.last_us = cpu_ns, now_us
        self.samples += 1


# --------------------------------------------------------------------------- the run
class Bench:
    def __init__(self, stack: Stack, workdir: Path, args: argparse.Namespace, progress: Callable[[str], None]):
        self.stack = stack
        self.core = client.CoreV1Api(stack.api)
        self.real = stack.real[NODE.name]
        self.workdir = workdir
        self.args = args
        self.progress = progress
        self.image = ""
        self.ns_per_loop = 0
        self.period_us = args.period_ms * 1000
        self.work_us = args.work_us
        self.hogs: list[str] = []

    def setup(self) -> None:
        info = build_bench_image()
        assert self.real.containerd is not None
        self.real.containerd.ctr("-n", CRI_NAMESPACE, "images", "import", "--local", str(info.tar_path))
        self.image = info.name
        self.core.create_namespace({"metadata": {"name": NS, "labels": {names.NAMESPACE_OPT_IN_LABEL: "true"}}})
        wait_for("the default ServiceAccount", lambda: self.core.list_namespaced_service_account(NS).items)

    def ledger(self) -> NodeLedger:
        obj = self.stack.nas(NODE.name)
        if obj is None:
            raise Fail("no NodeAllocationState")
        return NodeLedger.from_nas(obj)

    def dir_for(self, key: str) -> Path:
        d = self.workdir / key
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o777)
        return d

    def rtapp_pod(self, key: str, w: Workload, config: dict[str, Any]) -> dict[str, Any]:
        hostdir = self.dir_for(key)
        (hostdir / f"{w.name}.json").write_text(json.dumps(config, indent=1))
        command = ["sh", "-c", f"exec rt-app {MOUNT}/{w.name}.json >{MOUNT}/{w.name}.out 2>&1"]
        return pod_body(self.stack, self.image, w.name, command, hostdir, w.rt)

    def calibrate(self) -> None:
        """rt-app's work loop, timed in a plain pod on the idle node: ns per loop (the least over 50 jobs of
        200000 loops; the least, as the machine is shared: a job that was preempted ran longer)."""
        w = Workload("calibrate")
        config = rtapp_config("calibrate", jobs=50, period_us=40_000, work_us=200, delay_us=0, ns_per_loop=1)
        self.core.create_namespaced_pod(NS, self.rtapp_pod("calibrate", w, config))
        try:
            self.wait_terminated([w.name], timeout=120)
            self.ns_per_loop = ns_per_loop_of((self.workdir / "calibrate" / "calibrate-job-0.log").read_text())
        finally:
            delete_pods(self.core, [w.name])
        self.progress(f"rt-app's work loop: {self.ns_per_loop} ns per loop")

    def wait_terminated(
        self, pod_names: Sequence[str], timeout: float, tick: Callable[[], None] = lambda: None
    ) -> None:
        end = time.monotonic() + timeout
        pending = set(pod_names)
        while pending:
            if time.monotonic() > end:
                raise TimeoutError(f"pods {sorted(pending)} still running after {timeout:.0f}s")
            tick()
            for name in sorted(pending):
                state = container_state(self.core, name)
                if state is not None and state.terminated is not None:
                    pending.discard(name)
            time.sleep(0.25)

    def start_hogs(self) -> None:
        count = 2 * (os.cpu_count() or 1)
        hostdir = self.dir_for("hogs")
        for i in range(count):
            name = f"hog-{i}"
            command = ["stress-ng", "--cpu", "1", "--timeout", str(HOG_TIMEOUT_S), "--quiet"]
            self.core.create_namespaced_pod(NS, pod_body(self.stack, self.image, name, command, hostdir))
            self.hogs.append(name)

        def running() -> bool:
            return all((s := container_state(self.core, n)) is not None and s.running for n in self.hogs)

        wait_for("the hogs running", running, timeout=120)
        self.progress(f"{count} CPU hogs (stress-ng --cpu 1, plain pods) running")
        time.sleep(1.0)

    def stop_hogs(self) -> None:
        if self.hogs:
            delete_pods(self.core, self.hogs)
            self.hogs = []

    def run(self, sc: Scenario) -> None:
        jobs = int(self.args.seconds * 1000 / self.args.period_ms)
        delay_us = int(START_DELAY_S * 1e6)
        bodies = []
        for w in sc.pods:
            config = rtapp_config(
                w.name,
                jobs=jobs,
                period_us=self.period_us,
                work_us=self.work_us,
                delay_us=delay_us,
                ns_per_loop=self.ns_per_loop,
            )
            bodies.append(self.rtapp_pod(sc.key, w, config))
        watches = {w.name: Watch(w) for w in sc.pods}
        steal_before = steal()
        self.progress(f"{sc.title}: {len(sc.pods)} pod(s), {jobs} jobs each")
        for body in bodies:
            self.core.create_namespaced_pod(NS, body)
        names_ = [w.name for w in sc.pods]
        try:
            self._watch(sc, watches, delay_us)
            events, traced_note = self._traced(sc, watches, names_)
            stolen = steal_share(steal_before, steal())
            for w in sc.pods:
                self._collect(sc, w, watches[w.name], events)
            if traced_note:
                sc.notes.append(traced_note)
            sc.notes.append(f"CPU time the hypervisor stole from this VM during the run: {stolen:.1%}")
        finally:
            delete_pods(self.core, names_)

    def _watch(self, sc: Scenario, watches: dict[str, Watch], delay_us: int) -> None:
        """Find every worker thread and see it in its policy before its first release."""
        end = time.monotonic() + START_DELAY_S + 60
        while any(not w.seen_us for w in watches.values()):
            if time.monotonic() > end:
                missing = [n for n, w in watches.items() if not w.seen_us]
                raise Fail(f"{sc.title}: worker thread of {missing} not seen in its policy")
            for name, w in watches.items():
                if not w.pid:
                    pod = self.core.read_namespaced_pod(name, NS)
                    w.pid = self.real.container_pid(pod, CONTAINER) or 0
                if w.pid and not w.tid:
                    w.tid = worker_tid(w.pid) or 0
                w.check()
            time.sleep(0.05)

    def _traced(
        self, sc: Scenario, watches: dict[str, Watch], names_: Sequence[str]
    ) -> tuple[list[sched_trace.Event] | None, str]:
        """Probe (if the scenario has one) and wait for the workloads to end, tracing their workers
        (``--no-trace``: not); the events, or ``None`` and why not."""
        timeout = self.args.seconds + START_DELAY_S + 120

        def run() -> None:
            if sc.probe is not None:
                self._probe(sc)
            self.wait_terminated(names_, timeout=timeout, tick=lambda: _check(watches))

        if not self.args.trace:
            run()
            return None, ""
        try:
            with sched_trace.traced(w.tid for w in watches.values()) as trace:
                run()
                text = trace.read_text(errors="replace")
        except sched_trace.TraceUnavailable as err:  # raised while setting up, before run()
            run()
            return None, f"the workers were not traced: {err}"
        return sched_trace.parse(text), ""

    def _probe(self, sc: Scenario) -> None:
        """One more small RT pod: the extender must leave it Pending (the node is full)."""
        name = f"probe-{sc.key}"
        body = pod_body(self.stack, self.image, name, ["sleep", "3600"], self.dir_for(sc.key), sc.probe)
        self.core.create_namespaced_pod(NS, body)
        try:

            def refused() -> str:
                pod = self.core.read_namespaced_pod(name, NS)
                if pod.spec.node_name:
                    raise Fail(f"{sc.title}: one more pod ({sc.probe}) was bound: the node was not full")
                for cond in pod.status.conditions or []:
                    if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                        return str(cond.message or cond.reason)
                return ""

            message = wait_for(f"{name} refused", refused, timeout=30)
            sc.notes.append(f"one more pod ({sc.probe}) stays Pending: {message.strip()[:160]}")
        finally:
            delete_pods(self.core, [name])

    def _collect(self, sc: Scenario, w: Workload, watch: Watch, events: list[sched_trace.Event] | None) -> None:
        hostdir = self.workdir / sc.key
        out = (hostdir / f"{w.name}.out").read_text(errors="replace")
        state = container_state(self.core, w.name)
        code = state.terminated.exit_code if state is not None and state.terminated is not None else None
        # An RT-DRA worker ends by asking for SCHED_OTHER, which the kernel refuses (see the docstring): exit 1
        # with EPERM is what a worker still under the agent's reservation at its end gets; 0 would mean it was not.
        expected = (1, True) if w.rt else (0, False)
        if (code, EPERM_LINE in out) != expected:
            raise Fail(f"{w.name}: rt-app exited {code}, expected {expected[0]}:\n{out[-2000:]}")
        jobs = parse_rtapp_log((hostdir / f"{w.name}-{WORKER}-0.log").read_text(), self._deadline_us(w))
        if not jobs:
            raise Fail(f"{w.name}: no jobs logged")
        if w.rt and not watch.seen_us < jobs[0].release_us:
            raise Fail(
                f"{w.name}: worker seen under SCHED_DEADLINE only at {watch.seen_us}us, "
                f"after its first release at {jobs[0].release_us}us"
            )
        sc.jobs[w.name] = jobs
        what = (
            f"SCHED_DEADLINE {format_ns(w.runtime_ns)}/{format_ns(w.deadline_ns)}/{format_ns(w.period_ns)}"
            if w.rt
            else "SCHED_OTHER"
        )
        ahead_s = (jobs[0].release_us - watch.seen_us) / 1e6
        note = (
            f"{w.name}: worker thread {watch.tid} {what} from {ahead_s:.1f}s before its first job "
            f"({watch.samples} checks); CPU time per job {watch.cpu_per_job_us(jobs) / 1000:.3f} ms; rt-app exit {code}"
        )
        missed = [j for j in jobs if not j.met]
        if missed:  # a late start: an earlier job ran over; a long work wall time: throttled (budget spent)
            delay_ms = statistics.median(j.start_us - j.release_us for j in missed) / 1000
            wall_ms = statistics.median(j.run_us for j in missed) / 1000
            note += (
                f"; {len(missed)} missed: median start delay {delay_ms:.3f} ms, median work wall time {wall_ms:.3f} ms"
            )
            if events is not None:
                explained = [
                    sched_trace.explain(j, watch.tid, self.period_us, events, deadline_task=bool(w.rt)) for j in missed
                ]
                sc.causes.setdefault(w.name, []).extend(explained)
                note += "; traced: " + ", ".join(explained[:8]) + (" ..." if len(explained) > 8 else "")
        sc.notes.append(note)

    def _deadline_us(self, w: Workload) -> int:
        return (w.deadline_ns // NSEC_PER_USEC) if w.rt else self.period_us


def _check(watches: dict[str, Watch]) -> None:
    for w in watches.values():
        w.check()


# --------------------------------------------------------------------------- output
def table(sc: Scenario) -> list[str]:
    rows = [
        f"### {sc.title}",
        "",
        "| pod | kind | jobs | misses | p50 ms | p99 ms | max ms | deadline ms | max/deadline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in sc.pods:
        s = stats_of(sc.jobs[w.name])
        rows.append(
            f"| {w.name} | {w.kind} | {s.jobs} | {s.misses} | {s.p50_us / 1000:.3f} | {s.p99_us / 1000:.3f} "
            f"| {s.max_us / 1000:.3f} | {s.deadline_us / 1000:g} | {s.max_over_deadline:.2f} |"
        )
    if len(sc.pods) > 1:
        s = stats_of([j for js in sc.jobs.values() for j in js])
        rows.append(
            f"| all | | {s.jobs} | {s.misses} | {s.p50_us / 1000:.3f} | {s.p99_us / 1000:.3f} "
            f"| {s.max_us / 1000:.3f} | | {s.max_over_deadline:.2f} |"
        )
    rows.append("")
    rows += [f"- {n}" for n in sc.notes]
    rows.append("")
    return rows


def plot(scenarios: Sequence[Scenario], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "none (matplotlib not installed: pip install -e '.[bench]')"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    deadlines = set()
    for sc in scenarios:
        responses = sorted(j.response_us / 1000 for js in sc.jobs.values() for j in js)
        if not responses:
            continue
        ys = [(i + 1) / len(responses) for i in range(len(responses))]
        ax.step(
            responses, ys, where="post", label=f"{sc.title} ({len(responses)} jobs)", linestyle="-" if sc.rt else "--"
        )
        deadlines |= {j.deadline_us / 1000 for js in sc.jobs.values() for j in js}
    if not deadlines:
        plt.close(fig)
        return "none (no jobs)"
    for d in sorted(deadlines):
        ax.axvline(d, color="grey", linewidth=0.8, linestyle=":")
        ax.text(d, 0.02, f" D={d:g} ms", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("response time (ms, log scale): completion - release")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("rt-app periodic jobs on the real node: response time CDF (solid: RT-DRA, dashed: plain)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


CSV_COLUMNS = ("scenario", "pod", "kind", "job", "release_us", "start_us", "completion_us", "response_us")
CSV_COLUMNS += ("deadline_us", "met")


def write_jobs(scenarios: Sequence[Scenario], path: Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for sc in scenarios:
            for w in sc.pods:
                for i, j in enumerate(sc.jobs.get(w.name, [])):
                    row = (sc.key, w.name, w.kind, i, j.release_us, j.start_us, j.completion_us, j.response_us)
                    out.writerow((*row, j.deadline_us, j.met))


def steal() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs, from ``/proc/stat``."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[7], sum(fields[:8])


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


# --------------------------------------------------------------------------- leftovers
LEFTOVER_COMMS = ("rt-app", WORKER, "stress-ng")


def leftovers() -> list[str]:
    """Deadline tasks anywhere on the host, rt-app / stress-ng processes, and the bench's trace instance."""
    found = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for task in (pid_dir / "task").iterdir():
                comm = (task / "comm").read_text().strip()
                stat = (task / "stat").read_text()
                policy = int(stat.rsplit(")", 1)[1].split()[38])  # field 41: policy
                if policy == sched.SCHED_DEADLINE or comm.startswith(LEFTOVER_COMMS):
                    found.append(f"{pid_dir.name}/{task.name} {comm} policy {policy}")
        except (OSError, ValueError, IndexError):
            continue
    instance = sched_trace.TRACEFS / "instances" / sched_trace.INSTANCE
    if instance.exists():
        found.append(f"the trace instance {instance}")
    return found


# --------------------------------------------------------------------------- main
def scenarios_for(ledger: NodeLedger, args: argparse.Namespace) -> list[Scenario]:
    p_ns = args.period_ms * 1_000_000
    q_ns = args.runtime_us * NSEC_PER_USEC
    work_ns = args.work_us * NSEC_PER_USEC
    out = [
        Scenario("plain-idle", "plain pod, no interference", [Workload("plain-idle")], hogs=False),
        Scenario("rt-idle", "RT-DRA pod, no interference", [rt_workload("rt-idle", q_ns, p_ns)], hogs=False),
        Scenario("plain-hogs", "plain pod + hogs", [Workload("plain-hogs")], hogs=True),
        Scenario("rt-hogs", "RT-DRA pod + hogs", [rt_workload("rt-hogs", q_ns, p_ns)], hogs=True),
    ]
    # The node at its capacity: per CPU, what the agent measured (and the root domain's share of it).
    ncpu = len(ledger.capacities)
    cap = min(*ledger.capacities.values(), ledger.root_capacity // ncpu)
    budget_ns = int(args.budget_over_work * work_ns)
    count = max(1, min(args.max_pods, max_runtime(cap, p_ns) // budget_ns))
    runtimes = fill_to_capacity(cap, p_ns, count)
    full = [rt_workload(f"cap-{i}", q, p_ns) for i, q in enumerate(runtimes)]
    used = sum(bandwidth(q, p_ns) for q in runtimes)
    per = format_ns(p_ns)
    sc = Scenario(
        "capacity", f"{count} RT-DRA pods at capacity + hogs", full, hogs=True, probe=f"runtime=100us,period={per}"
    )
    sc.notes.append(
        f"each of {ncpu} CPUs: capacity {cap} ({percent(cap)}), reserved {used} ({percent(used)}), "
        f"left {cap - used}/{BW_UNIT} (< 1 ns of runtime per {format_ns(p_ns)})"
    )
    out.append(sc)
    # Constrained deadlines at the EDF test's limit.
    d_ns = p_ns // 2
    count = max(1, min(args.max_pods, max_runtime(cap, d_ns) // budget_ns))
    q_limit = edf_limit(cap, p_ns, d_ns, count)
    over = [Slot(0, q_limit + 1, d_ns, p_ns)] * count
    if fits_on_cpu(over[:-1], over[-1], cap):
        raise Fail("edf_limit is not the limit")
    constrained = [rt_workload(f"dlp-{i}", q_limit, p_ns, d_ns) for i in range(count)]
    sc = Scenario(
        "constrained",
        f"{count} RT-DRA pods, D=P/2 at the EDF limit + hogs",
        constrained,
        hogs=True,
        probe=f"runtime=100us,deadline={format_ns(d_ns)},period={format_ns(p_ns)}",
    )
    sc.notes.append(
        f"per CPU: {count} x runtime {format_ns(q_limit)}, deadline {format_ns(d_ns)}, period {format_ns(p_ns)}: "
        f"the largest runtime the EDF demand test admits at capacity {percent(cap)} (1 ns more does not fit); "
        f"bandwidth {percent(bandwidth(q_limit, p_ns) * count)}"
    )
    out.append(sc)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="run time of each scenario's workload")
    parser.add_argument("--period-ms", type=int, default=10, help="the workload's period P")
    parser.add_argument("--work-us", type=int, default=500, help="CPU work per job W (calibrated rt-app loop)")
    parser.add_argument("--runtime-us", type=int, default=2000, help="the single RT-DRA pod's runtime Q")
    parser.add_argument("--max-pods", type=int, default=6, help="at most this many pods at capacity")
    parser.add_argument(
        "--budget-over-work",
        type=float,
        default=BUDGET_OVER_WORK,
        help="runtime of each pod at capacity / at the EDF limit, at least this many times W",
    )
    parser.add_argument(
        "--only",
        default="",
        help="run only these scenarios (comma-separated: plain-idle, rt-idle, plain-hogs, rt-hogs, capacity, "
        "constrained)",
    )
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "rt", help="where tables, CSV and plot go")
    parser.add_argument(
        "--cpu-latency-us",
        type=int,
        default=0,
        help="the agent's --cpu-latency-us (docs/agent.md; default 0: CPUs poll, never halt); -1: none",
    )
    parser.add_argument(
        "--no-trace",
        dest="trace",
        action="store_false",
        help="do not trace the workers' wake-ups and switches (no cause per missed job)",
    )
    args = parser.parse_args()

    def progress(message: str) -> None:
        print(f"[bench-rt] {message}", flush=True)

    agent_args = ["--cpu-latency-us", str(args.cpu_latency_us)] if args.cpu_latency_us >= 0 else []
    scenarios: list[Scenario] = []
    failure = ""
    with (
        tempfile.TemporaryDirectory(prefix="rtdra-bench-rt-") as tmp,
        running_stack(Path(tmp) / "cp", [NODE], progress=progress, agent_args=agent_args) as stack,
    ):
        bench = Bench(stack, Path(tmp) / "pods", args, progress)
        try:
            bench.setup()
            bench.calibrate()
            ledger = bench.ledger()
            scenarios = scenarios_for(ledger, args)
            if args.only:
                wanted = set(args.only.split(","))
                unknown = wanted - {sc.key for sc in scenarios}
                if unknown:
                    raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
                scenarios = [sc for sc in scenarios if sc.key in wanted]
            for sc in scenarios:
                if sc.hogs and not bench.hogs:
                    bench.start_hogs()
                if not sc.hogs:
                    bench.stop_hogs()
                bench.run(sc)
        except Fail as err:
            failure = str(err)
        finally:
            bench.stop_hogs()
            wait_for("no deadline task nor rt-app/stress-ng left", lambda: not leftovers(), timeout=60)
    left = leftovers()
    if left:
        failure = failure or f"left behind: {left}"

    done = [sc for sc in scenarios if sc.jobs]
    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# RT guarantee on the real node (bench/bench_rt.py)",
        "",
        f"rt-app, one worker: {args.work_us}us of work every {args.period_ms}ms "
        f"({bench.ns_per_loop} ns/loop), {args.seconds:g}s per scenario; hogs: stress-ng --cpu 1 "
        f"in {2 * (os.cpu_count() or 1)} plain pods; agent mode nri, "
        f"{f'--cpu-latency-us {args.cpu_latency_us}' if agent_args else 'no CPU latency request'}; "
        "response = completion - release; "
        f"pods at capacity / at the EDF limit get runtime >= {args.budget_over_work:g} x W.",
        "",
    ]
    for sc in done:
        lines += table(sc)
    rt_jobs = [j for sc in done for w in sc.pods if w.rt for j in sc.jobs[w.name]]
    misses = sum(not j.met for j in rt_jobs)
    by_key = {sc.key: sc for sc in done}
    ratio = math.nan
    if "plain-hogs" in by_key and "rt-hogs" in by_key:
        plain = stats_of([j for js in by_key["plain-hogs"].jobs.values() for j in js])
        rt = stats_of([j for js in by_key["rt-hogs"].jobs.values() for j in js])
        ratio = plain.max_us / rt.max_us
        lines.append(
            f"plain / RT-DRA worst-case response under the same hogs: {plain.max_us / 1000:.3f} ms / "
            f"{rt.max_us / 1000:.3f} ms = {ratio:.1f}x (plain misses: {plain.misses}/{plain.jobs})"
        )
    rt_causes = sched_trace.causes(c for sc in done if sc.rt for cs in sc.causes.values() for c in cs)
    if misses:
        lines.append(
            "RT-DRA misses by traced cause: "
            + (", ".join(f"{cause} {n}" for cause, n in rt_causes.most_common()) or "not traced")
        )
    png = plot(done, args.out / "rt-guarantee-cdf.png")
    write_jobs(done, args.out / "rt-guarantee-jobs.csv")
    lines += ["", f"plot: {png}", f"jobs: {args.out / 'rt-guarantee-jobs.csv'}"]
    (args.out / "rt-guarantee.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if failure:
        print(f"\nFAILED: {failure}")
    print(
        f"rt-guarantee: {len(rt_jobs)} RT-DRA jobs, {misses} missed; "
        f"plain/RT-DRA worst-case response {ratio:.1f}x; plot {png}"
    )
    return 1 if failure or misses or not rt_jobs else 0


if __name__ == "__main__":
    sys.exit(main())
