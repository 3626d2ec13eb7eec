"""Chaos: a burst of real-time pods larger than the cluster's bandwidth while faults hit the stack one
after another; then the invariants, read from the API and the kernel.

    python hack/chaos.py [--short] [--pods N] [--workdir DIR]      (make chaos)

The stack is the one the end-to-end tests run (``hack.stack``): a real control
plane with kube-controller-manager, the webhook, the extender and three nodes
with their agents - ``chaos-0`` with the ``deadline`` backend (real
SCHED_DEADLINE reservations on this machine's kernel, on the node simulator's
container processes) and two simulated 4-CPU nodes. While pods are created
(more bandwidth than the nodes have) and some deleted, the faults come one
after another, each followed by its recovery:

- ``extender-kill``: SIGKILL of the extender, restarted on its port;
- ``apiserver-kill``: SIGKILL of kube-apiserver, restarted;
- ``agent-kill``: SIGKILL of ``chaos-0``'s agent (its RT containers keep
  running) for longer than the extender's Lease bound, restarted;
- ``etcd-stop``: SIGSTOP of etcd for longer than the extender's timeout;
- ``extender-stop``: SIGSTOP of the extender for longer than kube-scheduler's
  ``httpTimeout`` (5 s);
- ``webhook-down``: the webhook stopped (the shipped ``failurePolicy: Fail``:
  creating an RT pod is refused meanwhile), started again;
- ``node-delete`` (not in ``--short``): ``chaos-2`` deleted with reservations
  on it, its agent gone; kube-controller-manager's pod GC removes its pods
  (about a minute) and the extender releases them.

Then, once the cluster has settled (or the settle time is up), the invariants:
no CPU overcommitted (also sampled every second throughout); every bound RT pod
reserved exactly once, on its node, with the CPUs of its annotation; no
reservation for a deleted or never-bound pod; no SCHED_DEADLINE task on this
machine without a pod, and every running RT container on ``chaos-0`` under its
reservation; every pending RT pod has an event that says why and fits no node;
every component healthy. The last line reads::

    chaos: <faults> faults, <pods> pods, <n> overcommitted CPUs, <n> leaked reservations, <n> stuck pods

and the exit status is 1 if any invariant is broken. Everything runs on
loopback and is torn down at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hack.stack import NAMESPACE, NodeSpec, Stack, running_stack, wait_for
from rtdra import host, names, sched
from rtdra.kube import API_FAILURES
from rtdra.ledger import NodeLedger
from rtdra.placement import check_pod
from rtdra.request import InvalidRequest, read_pod_request

T = TypeVar("T")

NODES: tuple[NodeSpec, ...] = (
    NodeSpec("chaos-0", "deadline"),
    NodeSpec("chaos-1", "none", cpus=4),
    NodeSpec("chaos-2", "none", cpus=4),
)
#: Fast enough that a fault's effects show within the run: releases within seconds, an agent silent for
#: 5 s is not trusted, reservations of pods never bound are released after 15 s.
EXTENDER_ARGS = (
    "--reconcile-interval-seconds", "2",
    "--bind-grace-seconds", "15",
    "--agent-lease-seconds", "5",
)  # fmt: skip
AGENT_ARGS = ("--lease-renew-interval", "1")
#: kube-scheduler's extender httpTimeout in the shipped configuration, and the webhook's timeoutSeconds.
EXTENDER_TIMEOUT_S = 5.0
ALL_FAULTS = (
    "extender-kill",
    "apiserver-kill",
    "agent-kill",
    "etcd-stop",
    "extender-stop",
    "webhook-down",
    "node-delete",
)
SHORT_FAULTS = ALL_FAULTS[:-1]
NS = "chaos"


@dataclass
class Report:
    faults: list[str] = field(default_factory=list)
    pods_created: int = 0
    creates_refused: int = 0
    pods_deleted: int = 0
    #: "node/cpu: used > capacity" - at the end and in any sample taken during the run.
    overcommitted: set[str] = field(default_factory=set)
    leaked: list[str] = field(default_factory=list)
    double: list[str] = field(default_factory=list)
    unreserved: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    unhealthy: list[str] = field(default_factory=list)
    failed_starts: list[str] = field(default_factory=list)
    #: RT pods created while the webhook was down: refused (as they must be), or admitted unmutated.
    refused_without_webhook: int = 0
    admitted_without_webhook: list[str] = field(default_factory=list)
    bound: int = 0
    pending: int = 0
    settle_s: float = 0.0
    #: The last lines of each component's log, kept when a component was found unhealthy.
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def broken(self) -> bool:
        return bool(
            self.overcommitted
            or self.leaked
            or self.double
            or self.unreserved
            or self.stuck
            or self.unhealthy
            or self.admitted_without_webhook
        )

    def summary(self) -> str:
        return (
            f"chaos: {len(self.faults)} faults, {self.pods_created} pods, "
            f"{len(self.overcommitted)} overcommitted CPUs, {len(self.leaked)} leaked reservations, "
            f"{len(self.stuck)} stuck pods"
        )

    def lines(self) -> Iterator[str]:
        yield f"faults injected and recovered: {', '.join(self.faults)}"
        yield (
            f"pods: {self.pods_created} created ({self.creates_refused} creations refused while a fault lasted), "
            f"{self.pods_deleted} deleted mid-burst, {self.refused_without_webhook} refused without the webhook "
            f"(failurePolicy Fail); at the end {self.bound} bound, {self.pending} pending; "
            f"settled in {self.settle_s:.1f}s"
        )
        for name, tail in self.logs.items():
            yield f"--- last lines of {name}'s log:"
            yield tail
        for title, items in (
            ("overcommitted CPUs", sorted(self.overcommitted)),
            ("leaked reservations", self.leaked),
            ("double or mismatched reservations", self.double),
            ("bound RT containers not under their reservation", self.unreserved),
            ("stuck pods", self.stuck),
            ("unhealthy components", self.unhealthy),
            ("RT pods admitted while the webhook was down", self.admitted_without_webhook),
            ("container starts refused while a fault lasted (the pod keeps its reservation)", self.failed_starts),
        ):
            yield f"{title}: {len(items)}"
            for item in items[:20]:
                yield f"  - {item}"


def retry(what: str, call: Callable[[], T], timeout: float = 90.0) -> T:
    """``call()`` again until the API answers (it may be restarting or stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except API_FAILURES as err:
            if isinstance(err, ApiException) and err.status and err.status < 500 and err.status != 429:
                raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: the API did not answer for {timeout:.0f}s: {err}") from None
            time.sleep(0.5)


def rt_pod(name: str, runtime_ms: int, cpus: int) -> dict[str, Any]:
    value = f"runtime={runtime_ms}ms,period=10ms,cpus={cpus}"
    return {
        "metadata": {"name": name, "annotations": {f"{names.CONTAINER_PREFIX}app": value}},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "infinity"]}],
            "terminationGracePeriodSeconds": 1,
        },
    }


class Chaos:
    def __init__(
        self, stack: Stack, *, pods: int, faults: tuple[str, ...], seed: int = 1, burst_seconds: float = 45.0
    ) -> None:
        self.stack = stack
        self.core = client.CoreV1Api(stack.api)
        self.objects = client.CustomObjectsApi(stack.api)
        self.pods = pods
        #: The burst is spread over about this long, so that pods arrive during every fault.
        self.interval = max(0.1, burst_seconds / pods)
        self.fault_names = faults
        self.random = random.Random(seed)
        self.report = Report()
        self.deleted_nodes: set[str] = set()
        self._burst_done = threading.Event()
        self._stop = threading.Event()

    # -- the load ---------------------------------------------------------------------

    def _create(self) -> None:
        for i in range(self.pods):
            if self._stop.is_set():
                return
            body = rt_pod(f"rt-{i:03d}", self.random.choice((3, 4, 5, 6)), self.random.choice((1, 1, 2)))
            while not self._stop.is_set():
                try:
                    self.core.create_namespaced_pod(NS, body)
                    self.report.pods_created += 1
                    break
                except API_FAILURES:  # the webhook (failurePolicy Fail) or the API is away: try again
                    self.report.creates_refused += 1
                    time.sleep(1.0)
            time.sleep(self.interval)
        self._burst_done.set()

    def _delete(self) -> None:
        while not self._stop.wait(4.0):
            with contextlib.suppress(*API_FAILURES):
                bound = [p for p in self.core.list_namespaced_pod(NS).items if p.spec.node_name]
                if bound:
                    victim = self.random.choice(bound)
                    self.core.delete_namespaced_pod(victim.metadata.name, NS)
                    self.report.pods_deleted += 1

    def _sample(self) -> None:
        """Overcommit is never allowed, not even for a moment: look every second."""
        while not self._stop.wait(1.0):
            with contextlib.suppress(*API_FAILURES):
                for ledger in self.ledgers().values():
                    self.report.overcommitted |= overcommitted(ledger)

    # -- the faults ----------------------------------------------------------------------

    def fault(self, name: str) -> None:
        stack, cp = self.stack, self.stack.cp
        print(f"chaos: {name}", flush=True)
        if name == "extender-kill":
            stack.restart_extender(signal.SIGKILL)
        elif name == "apiserver-kill":
            cp.restart("kube-apiserver")
        elif name == "agent-kill":
            stack.stop_process("agent-chaos-0", signal.SIGKILL)
            time.sleep(7.0)  # past the extender's Lease bound: the node must be refused meanwhile
            retry("restarting the agent", lambda: stack.start_agent(NODES[0]))
            wait_for("chaos-0's ledger Ready again", lambda: stack.nas_ready("chaos-0"), timeout=60)
        elif name == "etcd-stop":
            self._pause(cp.pids["etcd"], EXTENDER_TIMEOUT_S + 3, group=False)
        elif name == "extender-stop":
            self._pause(stack.procs["extender"].pid, EXTENDER_TIMEOUT_S + 3, group=True)
        elif name == "webhook-down":
            stack.stop_process("webhook", signal.SIGKILL)
            self._probe_without_webhook()
            time.sleep(4.0)
            retry("restarting the webhook", stack.start_webhook)
        elif name == "node-delete":
            stack.stop_process("agent-chaos-2", signal.SIGKILL)
            retry("deleting node chaos-2", lambda: cp.delete_node("chaos-2"))
            self.deleted_nodes.add("chaos-2")
        else:
            raise ValueError(f"unknown fault {name!r}")
        self.report.faults.append(name)

    def _probe_without_webhook(self) -> None:
        """With the webhook away, the shipped ``failurePolicy: Fail`` must refuse an RT pod, not admit it as is."""
        try:
            self.core.create_namespaced_pod(NS, rt_pod("probe-without-webhook", 1, 1))
        except ApiException as err:
            if err.status and err.status >= 500 and "webhook" in str(err.body):
                self.report.refused_without_webhook += 1
                return
            raise
        self.report.admitted_without_webhook.append("probe-without-webhook")

    @staticmethod
    def _pause(pid: int, seconds: float, *, group: bool) -> None:
        send = os.killpg if group else os.kill
        send(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            send(pid, signal.SIGCONT)

    # -- reading the state ------------------------------------------------------------------

    def ledgers(self) -> dict[str, NodeLedger]:
        body = self.objects.list_namespaced_custom_object(
            names.NAS_GROUP, names.NAS_VERSION, NAMESPACE, names.NAS_PLURAL
        )
        return {ledger.node: ledger for ledger in (NodeLedger.from_nas(o) for o in body.get("items") or [])}

    def check(self) -> Report:
        """The invariants, now (a fresh :class:`Report` with this run's counters)."""
        counters = ("faults", "pods_created", "creates_refused", "pods_deleted", "refused_without_webhook")
        r = Report(**{k: getattr(self.report, k) for k in counters})
        r.admitted_without_webhook = list(self.report.admitted_without_webhook)
        r.overcommitted = set(self.report.overcommitted)
        ledgers = retry("listing ledgers", self.ledgers)
        pods = [
            self.core.api_client.sanitize_for_serialization(p)
            for p in retry("listing pods", lambda: self.core.list_namespaced_pod(NS).items)
        ]
        nodes = {n.metadata.name for n in retry("listing nodes", lambda: self.core.list_node().items)}
        by_uid = {p["metadata"]["uid"]: p for p in pods}
        held: dict[str, list[str]] = {}
        for node, ledger in ledgers.items():
            r.overcommitted |= overcommitted(ledger)
            for uid, allocation in ledger.pods.items():
                held.setdefault(uid, []).append(node)
                pod = by_uid.get(uid)
                where = f"{allocation.namespace}/{allocation.name} on {node}"
                if pod is None:
                    r.leaked.append(f"{where}: the pod is gone")
                elif (pod["status"] or {}).get("phase") in ("Succeeded", "Failed"):
                    r.leaked.append(f"{where}: the pod has finished")
                elif pod["spec"].get("nodeName") not in (None, node):
                    r.leaked.append(f"{where}: the pod is bound to {pod['spec']['nodeName']}")
                elif not pod["spec"].get("nodeName"):
                    r.leaked.append(f"{where}: the pod is not bound (reserved {allocation.reserved_at})")
        events = self._events()
        for pod in pods:
            meta, spec = pod["metadata"], pod["spec"]
            uid, name, node = meta["uid"], meta["name"], spec.get("nodeName")
            annotations = meta.get("annotations") or {}
            if meta.get("deletionTimestamp"):
                continue
            if node:
                r.bound += 1
                if node not in nodes:  # kube-controller-manager's pod GC removes it, then the reservation goes
                    r.stuck.append(f"{name}: bound to node {node}, which was deleted, and not removed yet")
                reserved_on = held.get(uid, [])
                if reserved_on != [node]:
                    r.double.append(f"{name} bound to {node}, reserved on {reserved_on or 'no node'}")
                    continue
                annotated = json.loads(annotations.get(names.ALLOCATION, "{}"))
                cpus = {c: tuple(v["cpus"]) for c, v in (annotated.get("containers") or {}).items()}
                ledger_cpus = {c: ledgers[node].pods[uid].cpus_of(c) for c in ledgers[node].pods[uid].containers}
                if annotated.get("node") != node or cpus != ledger_cpus:
                    r.double.append(f"{name}: annotation {annotated} but ledger of {node} has {ledger_cpus}")
                continue
            r.pending += 1
            why = events.get(uid)
            if not why:
                r.stuck.append(f"{name}: pending with no event saying why")
                continue
            fits = self._fits(pod, ledgers, nodes)
            if fits:
                r.stuck.append(f"{name}: pending ({why}) but fits {fits}")
        r.unreserved, r.failed_starts, leaked_tasks = self._kernel(by_uid, ledgers)
        r.leaked += leaked_tasks
        r.unhealthy = self._health(ledgers)
        return r

    def _events(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in retry("listing events", lambda: self.core.list_namespaced_event(NS).items):
            if e.reason == "FailedScheduling" and e.involved_object.uid:
                out[e.involved_object.uid] = e.message or ""
        return out

    def _fits(self, pod: Mapping[str, Any], ledgers: Mapping[str, NodeLedger], nodes: set[str]) -> list[str]:
        try:
            request = read_pod_request(pod)
        except InvalidRequest:
            return []
        if request is None:
            return []
        return [
            n
            for n, ledger in sorted(ledgers.items())
            if n in nodes and n not in self.deleted_nodes and ledger.ready and check_pod(ledger, request) is None
        ]

    def _kernel(
        self, by_uid: Mapping[str, Mapping[str, Any]], ledgers: Mapping[str, NodeLedger]
    ) -> tuple[list[str], list[str], list[str]]:
        """RT containers on ``chaos-0`` under their reservation; no deadline task on this machine without a pod."""
        sim = self.stack.sim
        assert sim is not None
        unreserved: list[str] = []
        failed: list[str] = []
        expected: set[int] = set()
        chaos0 = ledgers.get("chaos-0")
        for uid, simpod in list(sim.pods.items()):
            pod = by_uid.get(uid)
            if simpod.node != "chaos-0" or pod is None or pod["metadata"].get("deletionTimestamp"):
                continue
            allocation = chaos0.pods.get(uid) if chaos0 is not None else None
            for container in simpod.containers:
                if container.error:
                    failed.append(f"{simpod.name}/{container.name}: {container.error}")
                    continue
                proc = container.process
                if proc is None or proc.poll() is not None or allocation is None:
                    continue
                expected.add(proc.pid)
                slots = allocation.containers.get(container.name) or ()
                try:
                    attr = sched.sched_getattr(proc.pid)
                except OSError:
                    continue
                if not slots or not attr.is_deadline or attr.runtime_ns != slots[0].runtime_ns:
                    unreserved.append(f"{simpod.name}/{container.name} pid {proc.pid}: {attr}")
        leaked = [
            f"pid {pid} ({comm}) is SCHED_DEADLINE with no pod" for pid, comm in deadline_tasks() if pid not in expected
        ]
        return unreserved, failed, leaked

    def _health(self, ledgers: Mapping[str, NodeLedger]) -> list[str]:
        bad: list[str] = []
        stack = self.stack
        checks = {
            "extender": (f"http://127.0.0.1:{stack.extender_port}/readyz", None),
            "webhook": (
                f"https://127.0.0.1:{stack.webhook_port}/readyz",
                ssl.create_default_context(cafile=str(stack.workdir / "webhook-certs" / "ca.crt")),
            ),
            "kube-apiserver": (f"{stack.cp.server}/readyz", stack.cp.admin_ssl_context()),
        }
        for name, (url, context) in checks.items():
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as reply:
                    if reply.status != 200:
                        bad.append(f"{name}: HTTP {reply.status}")
            except OSError as err:
                bad.append(f"{name}: {err}")
        for spec in stack.nodes:
            if spec.name in self.deleted_nodes:
                continue
            proc = stack.procs.get(f"agent-{spec.name}")
            if proc is None or proc.poll() is not None:
                bad.append(f"agent of {spec.name} is not running")
            ledger = ledgers.get(spec.name)
            if ledger is None or not ledger.ready:
                bad.append(f"ledger of {spec.name} is not Ready")
        return bad

    # -- the run -------------------------------------------------------------------------

    def run(self, settle_timeout: float = 120.0) -> Report:
        retry("creating the namespace", lambda: self.core.create_namespace(
            {"metadata": {"name": NS, "labels": {names.NAMESPACE_OPT_IN_LABEL: "true"}}}
        ))  # fmt: skip
        threads = [threading.Thread(target=f, daemon=True) for f in (self._create, self._delete, self._sample)]
        for t in threads:
            t.start()
        try:
            time.sleep(3.0)
            for name in self.fault_names:
                self.fault(name)
                time.sleep(2.0)
            self._burst_done.wait(timeout=self.pods * 2.0)
        finally:
            self._stop.set()
            for t in threads:
                t.join(timeout=30)
        print("chaos: faults over; waiting for the cluster to settle", flush=True)
        start = time.monotonic()
        report = self.check()
        while report.broken and time.monotonic() - start < settle_timeout:
            time.sleep(2.0)
            report = self.check()
        report.settle_s = time.monotonic() - start
        if report.unhealthy:  # the evidence goes before the stack does
            for name in sorted(self.stack.procs):
                report.logs[name] = self.stack.log_tail(name, 40)
        return report

    def drain(self) -> None:
        """Delete every pod of the run and wait until they are gone (their reservations released)."""
        with contextlib.suppress(*API_FAILURES):
            self.core.delete_collection_namespaced_pod(NS, grace_period_seconds=0)
        with contextlib.suppress(TimeoutError):
            wait_for("chaos pods gone", lambda: not self.core.list_namespaced_pod(NS).items, timeout=90)


def overcommitted(ledger: NodeLedger) -> set[str]:
    return {f"{ledger.node}/cpu{cpu}" for residual, cpu in ledger.residuals if residual < 0}


def deadline_tasks() -> list[tuple[int, str]]:
    """Every SCHED_DEADLINE task on this machine: (tid, command)."""
    found: list[tuple[int, str]] = []
    for task in host.deadline_tasks():
        with contextlib.suppress(OSError):
            found.append((task.tid, Path(f"/proc/{task.tid}/comm").read_text().strip()))
    return found


def run(
    workdir: Path,
    *,
    pods: int,
    faults: tuple[str, ...],
    seed: int = 1,
    log: Callable[[str], None] = print,
    binaries: Any = None,
) -> Report:
    """Start the stack in ``workdir``, run the chaos, drain, stop everything; the invariants found."""
    with running_stack(
        workdir,
        NODES,
        binaries=binaries,
        extender_args=EXTENDER_ARGS,
        agent_args=AGENT_ARGS,
        progress=lambda m: log(f"stack: {m}"),
    ) as stack:
        chaos = Chaos(stack, pods=pods, faults=faults, seed=seed)
        try:
            report = chaos.run()
        finally:
            chaos.drain()
    return report


# -- the soak --------------------------------------------------------------------------


@dataclass
class Growth:
    """One component's resident memory and open files over the soak, and their least-squares slopes."""

    name: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (seconds, RSS bytes, fds)

    def slopes(self) -> tuple[float, float]:
        """(MiB per hour, fds per hour) over the second half of the run (the first half warms caches up)."""
        half = self.samples[len(self.samples) // 2 :]
        return (
            _slope([(t, rss / 2**20) for t, rss, _ in half]) * 3600,
            _slope([(t, float(fds)) for t, _, fds in half]) * 3600,
        )


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0


def group_usage(leader: int) -> tuple[int, int]:
    """RSS (bytes) and open files of a process and every process in its group (gunicorn's workers)."""
    rss = fds = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if pid != leader and os.getpgid(pid) != leader:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            rss += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return rss, fds


@dataclass
class SoakReport:
    seconds: float
    pods_created: int = 0
    pods_deleted: int = 0
    checks: int = 0
    #: Invariant violations that persisted over consecutive checks (a transient state is not one).
    violations: list[str] = field(default_factory=list)
    growth: dict[str, Growth] = field(default_factory=dict)

    def lines(self) -> Iterator[str]:
        yield (
            f"soak: {self.seconds / 60:.1f} min, {self.pods_created} pods created, {self.pods_deleted} deleted, "
            f"{self.checks} checks of the invariants"
        )
        yield f"{'component':<22} {'RSS MiB':>8} {'MiB/h':>8} {'fds':>5} {'fds/h':>7}"
        for g in self.growth.values():
            if not g.samples:
                continue
            mib_h, fds_h = g.slopes()
            _, rss, fds = g.samples[-1]
            yield f"{g.name:<22} {rss / 2**20:8.1f} {mib_h:+8.2f} {fds:5d} {fds_h:+7.1f}"
        yield f"violations: {len(self.violations)}"
        for v in self.violations[:20]:
            yield f"  - {v}"

    def summary(self) -> str:
        worst = max(self.growth.values(), key=lambda g: g.slopes()[0] if g.samples else 0.0, default=None)
        slope = f"{worst.name} {worst.slopes()[0]:+.2f} MiB/h" if worst is not None and worst.samples else "none"
        return (
            f"soak: {self.seconds / 60:.1f} min, {self.pods_created} pods, {len(self.violations)} invariant "
            f"violations; steepest memory slope {slope}"
        )


class Soak(Chaos):
    """Steady churn of RT pods for ``seconds``: the invariants checked every ``every`` seconds, and the
    memory and open files of each component sampled, so that a leak shows as a slope."""

    def __init__(self, stack: Stack, *, seconds: float, population: int = 30, rate: float = 1.0, every: float = 10.0):
        super().__init__(stack, pods=population, faults=())
        self.seconds = seconds
        self.population = population
        self.rate = rate
        self.every = every

    def components(self) -> dict[str, int]:
        pids = {name: proc.pid for name, proc in self.stack.procs.items() if proc.poll() is None}
        pids.update({n: p for n, p in self.stack.cp.all_pids().items() if n in ("kube-apiserver", "etcd")})
        return pids

    def _churn(self, report: SoakReport) -> None:
        i = 0
        while not self._stop.wait(1.0 / self.rate):
            with contextlib.suppress(*API_FAILURES):
                pods = self.core.list_namespaced_pod(NS).items
                live = [p for p in pods if not p.metadata.deletion_timestamp]
                if len(live) >= self.population:  # the oldest goes, bound or pending
                    oldest = min(live, key=lambda p: p.metadata.creation_timestamp)
                    self.core.delete_namespaced_pod(oldest.metadata.name, NS)
                    report.pods_deleted += 1
                body = rt_pod(f"soak-{i:06d}", self.random.choice((3, 4, 5, 6)), self.random.choice((1, 1, 2)))
                self.core.create_namespaced_pod(NS, body)
                report.pods_created += 1
                i += 1

    def soak(self) -> SoakReport:
        report = SoakReport(self.seconds)
        retry("creating the namespace", lambda: self.core.create_namespace(
            {"metadata": {"name": NS, "labels": {names.NAMESPACE_OPT_IN_LABEL: "true"}}}
        ))  # fmt: skip
        churn = threading.Thread(target=self._churn, args=(report,), daemon=True)
        churn.start()
        start = time.monotonic()
        seen: dict[str, int] = {}  # violation -> consecutive checks it was found in
        try:
            while (now := time.monotonic() - start) < self.seconds:
                for name, pid in self.components().items():
                    rss, fds = group_usage(pid)
                    report.growth.setdefault(name, Growth(name)).samples.append((now, rss, fds))
                found = self.check()
                report.checks += 1
                current = {f"overcommitted {c}" for c in found.overcommitted}
                current |= {*found.leaked, *found.double, *found.unreserved, *found.stuck, *found.unhealthy}
                seen = {v: seen.get(v, 0) + 1 for v in current}
                for violation, times in seen.items():
                    # Overcommit is never transient; the rest must last three checks (a release, a start,
                    # a requeue in flight take seconds).
                    if (times == 1 and violation.startswith("overcommitted")) or times == 3:
                        report.violations.append(f"at {now:.0f}s: {violation}")
                self._stop.wait(self.every)
        finally:
            self._stop.set()
            churn.join(timeout=30)
        return report


def soak(workdir: Path, *, seconds: float, binaries: Any = None, log: Callable[[str], None] = print) -> SoakReport:
    with running_stack(
        workdir,
        NODES[:2],
        binaries=binaries,
        extender_args=EXTENDER_ARGS,
        agent_args=AGENT_ARGS,
        progress=lambda m: log(f"stack: {m}"),
    ) as stack:
        s = Soak(stack, seconds=seconds)
        try:
            return s.soak()
        finally:
            s.drain()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="the CI form: no node deletion, fewer pods")
    p.add_argument("--pods", type=int, help="RT pods in the burst (default 60, short 40)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, help="where the control plane lives (default: a temporary directory)")
    p.add_argument("--soak", type=float, metavar="MINUTES", help="instead: steady churn this long (make soak)")
    args = p.parse_args(argv)
    if args.soak:
        with tempfile.TemporaryDirectory(prefix="rtdra-soak-") as tmp:
            soaked = soak(args.workdir or Path(tmp) / "cluster", seconds=args.soak * 60)
        for line in soaked.lines():
            print(line)
        print(soaked.summary())
        return 1 if soaked.violations else 0
    faults = SHORT_FAULTS if args.short else ALL_FAULTS
    pods = args.pods or (40 if args.short else 60)
    with tempfile.TemporaryDirectory(prefix="rtdra-chaos-") as tmp:
        workdir = args.workdir or Path(tmp) / "cluster"
        report = run(workdir, pods=pods, faults=faults, seed=args.seed)
    for line in report.lines():
        print(line)
    print(report.summary())
    return 1 if report.broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
