#!/usr/bin/env python3
"""Scheduling throughput through the extender, against plain kube-scheduler in the same run.

On the real control plane (upstream kube-apiserver, kube-scheduler, etcd),
with 100 simulated nodes whose NodeAllocationStates are published as their
agents would (8 CPUs each, this machine's measured capacity per CPU), it
schedules

- ``plain``: N pods without a real-time request - kube-scheduler alone;
- ``rt``: N real-time pods (one container, 1 ms every 10 ms, as the webhook
  leaves them: canonical spec annotation and the opt-in resource) -
  kube-scheduler calls the extender's filter, prioritize and bind for each,
  and bind writes the reservation with compare-and-swap before the Binding;
- ``dra``: N pods each with a ResourceClaim of device class
  rt.resource.example.com asking for the same reservation (as the webhook
  leaves it: count 1 and the bandwidth capacity request), on the same nodes
  published as DRA mode's ResourceSlices (a device per CPU, same capacity) -
  kube-scheduler's DRA plugin allocates and binds, the extender is not called;
- ``plain+score`` and ``dra+score``: the same with DRA mode's optional scoring
  entry (manifests/scheduler/dra-scoring-config.yaml): DRA pods carry the
  webhook's marker resource and kube-scheduler calls the extender's
  ``/dra/prioritize`` for them; ``plain+score`` / ``plain`` is what the option
  costs pods that are not real-time (they should never reach the extender);
- ``mixed``: N pods, plain, RT and DRA in turn, all in one queue, with the
  scoring entry on: what each kind does to the others' throughput;
- ``rt+pick``: the same RT pods with the extender's ``pick`` verb as
  kube-scheduler's ``filterVerb``: the filter passes only the node the pod's
  placement ranks first, so kube-scheduler neither scores nor calls prioritize
  (two extender calls per pod instead of three);
- ``plain@rt``: N plain pods with kube-scheduler's client limited to the
  ``rt`` phase's pods/s, so the API server's CPU per pod compares with the RT
  pods' at the same rate (:data:`SAME_RATE`).

Each phase creates its pods while kube-scheduler is stopped, then starts it
and times from the moment it is ready to the last pod bound (seen on a watch,
which costs the shared API server far less than polling lists would), so pod
creation is not what is measured. Prints pods/s for both and their ratio
(goal: rt at least 0.8 of plain), what the extender did in the RT phase (calls
and mean latency per verb, bind results, compare-and-swap conflicts, from its
``/metrics``), and checks afterwards that every RT pod is recorded in exactly
one ledger and no CPU is over capacity.

``--repeat N`` runs everything N times, each on a fresh control plane (plain
and RT interleaved: the machine is shared, so single runs are noisy) and
prints every run and the medians. ``--workdir DIR`` keeps the control plane's
directory with kube-scheduler's and the extender's logs (``DIR/run-K/logs``,
``DIR/run-K/stack/logs``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client, watch  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from hack.cluster import ControlPlane  # noqa: E402
from hack.k8sbins import Binaries, ensure_binaries  # noqa: E402
from hack.stack import NAMESPACE, Stack, apply, manifest_documents  # noqa: E402
from rtdra import dra, host, names  # noqa: E402
from rtdra.ledger import NodeLedger  # noqa: E402
from rtdra.request import PodRequest, Reservation  # noqa: E402

MS = 1_000_000
GOAL_RATIO = 0.8


def measured_capacity() -> int:
    """This machine's per-CPU deadline capacity, measured as the agent measures it."""
    return min(host.discover_capacity().per_cpu.values())


def pod(name: str, kind: str, scoring: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }
    if kind == "dra":
        body["spec"]["resourceClaims"] = [{"name": "rt", "resourceClaimName": name}]
        body["spec"]["containers"][0]["resources"] = {"claims": [{"name": "rt"}]}
        if scoring:  # the webhook's marker (RTDRA_WEBHOOK_DRA_SCORING), the scoring entry's managedResources
            marker = {dra.SCORING_RESOURCE: "1"}
            body["spec"]["containers"][0]["resources"].update(requests=marker, limits=marker)
    if kind == "rt":
        spec = PodRequest({"app": RESERVATION}).spec_json()
        body["metadata"]["annotations"] = {names.SPEC: spec, f"{names.CONTAINER_PREFIX}app": "runtime=1ms,period=10ms"}
        body["spec"]["containers"][0]["resources"] = {
            "requests": {names.DL_RESOURCE: "1"},
            "limits": {names.DL_RESOURCE: "1"},
        }
    return body


#: DRA mode's cluster objects the bench needs beside the CRDs.
DRA_KINDS = ("DeviceClass",)
#: The reservation of every RT and DRA pod: 1 ms every 10 ms on one CPU.
RESERVATION = Reservation(1 * MS, 10 * MS, 10 * MS)
#: Phases: (label, pods are RT / DRA / plain, DRA scoring entry in kube-scheduler).
PHASES = (("plain", "plain", False), ("plain+score", "plain", True), ("rt", "rt", False),
          ("rt+pick", "rt", False), ("plain@rt", "plain", False), ("dra", "dra", False), ("dra+score", "dra", True),
          ("mixed", "mixed", True))  # fmt: skip
#: ``plain@rt``: plain pods with kube-scheduler's client limited to the ``rt`` phase's pods/s (its Bindings
#: then come at that rate): the API server's CPU per pod at the same rate as the RT pods'. Per pod it
#: grows as the rate falls (its fixed work - watches, leases, its own upkeep - is shared by fewer pods),
#: so the two fast phases' figures do not compare the work an RT pod itself costs.
SAME_RATE = "plain@rt"
#: Phases whose kube-scheduler calls the extender's ``pick`` verb instead of ``filter``.
PICK = ("rt+pick",)
#: The mixed phase's pods, in turn.
MIXED = ("plain", "rt", "dra")


def namespace(label: str) -> str:
    return f"bench-{label.replace('+', '-').replace('@', '-at-')}"


def pods_of_kind(label: str, kind: str, count: int) -> list[str]:
    """The names of a phase's pods of ``kind`` (a mixed phase has every kind in turn)."""
    names_ = [f"p-{i}" for i in range(count)]
    if label == "mixed":
        return [n for i, n in enumerate(names_) if MIXED[i % len(MIXED)] == kind]
    return names_ if dict((lbl, k) for lbl, k, _ in PHASES)[label] == kind else []


def resource_slice(node: str, cpus: int, capacity: int) -> dict[str, Any]:
    """The slice DRA mode's agent publishes for ``node`` (rtdra.dra): a device per CPU sharing its bandwidth."""
    devices = [
        {"name": dra.device_name(cpu), "allowMultipleAllocations": True,
         "capacity": {dra.CAPACITY: {"value": str(capacity)}}}
        for cpu in range(cpus)
    ]  # fmt: skip
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-rt"},
        "spec": {"driver": dra.DRIVER, "nodeName": node, "devices": devices,
                 "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}},
    }  # fmt: skip


def resource_claim(name: str) -> dict[str, Any]:
    """A claim for RESERVATION as the webhook leaves it (count and capacity request written)."""
    parameters = {
        "apiVersion": dra.PARAMETERS_API_VERSION,
        "kind": dra.PARAMETERS_KIND,
        "spec": {"count": 1, "runtime": RESERVATION.runtime_ns // 1000, "period": RESERVATION.period_ns // 1000},
    }
    capacity = dra.capacity_request(dra.parameters_reservation("rt", parameters))
    exactly = {"deviceClassName": dra.DEVICE_CLASS, "allocationMode": "ExactCount", "count": 1,
               "capacity": {"requests": {dra.CAPACITY: str(capacity)}}}  # fmt: skip
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "rt", "exactly": exactly}],
                             "config": [{"requests": ["rt"], "opaque": {"driver": dra.DRIVER,
                                                                        "parameters": parameters}}]}},
    }  # fmt: skip


def stop_scheduler(cp: ControlPlane) -> None:
    cp.stop_process("kube-scheduler")


def extender_metrics(stack: Stack) -> dict[str, float]:
    """The extender's counters, flattened to ``name{label=value,...}`` -> value."""
    url = f"http://127.0.0.1:{stack.extender_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    flat: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            if "le" in sample.labels:
                continue
            flat[f"{sample.name}{{{labels}}}"] = sample.value
    return flat


def extender_summary(before: dict[str, float], after: dict[str, float]) -> str:
    """What the extender did between two scrapes: calls and mean latency per verb, bind outcomes, conflicts."""
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}
    lines = []
    for verb in ("filter", "pick", "prioritize", "bind", "dra/prioritize"):
        count = delta.get(f"rtdra_extender_request_duration_seconds_count{{verb={verb}}}", 0.0)
        total = delta.get(f"rtdra_extender_request_duration_seconds_sum{{verb={verb}}}", 0.0)
        if count:
            lines.append(f"  {verb:<11} {count:6.0f} calls, mean {1000 * total / count:6.1f} ms")
    outcomes = defaultdict(float)
    for key, value in delta.items():
        if key.startswith("rtdra_extender_binds_total{"):
            outcomes[key.split("result=")[1].rstrip("}")] += value
    conflicts = delta.get("rtdra_extender_bind_conflicts_total{}", 0.0)
    rollbacks = delta.get("rtdra_extender_bind_rollbacks_total{}", 0.0)
    lines.append(
        "  binds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in sorted(outcomes.items()))
        + f"; CAS conflicts {conflicts:.0f}; rollbacks {rollbacks:.0f}"
    )
    return "\n".join(lines)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live descendants (gunicorn workers), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = defaultdict(list)
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children[int(fields[1])].append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / ticks
        todo += children.get(p, [])
    return total


def _machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]
    return (sum(values) - idle) / ticks, sum(values) / ticks


def cpu_snapshot(cp: ControlPlane, stack: Stack) -> dict[str, float]:
    """CPU seconds so far of each component and of the whole machine."""
    pids = {name: pid for name, pid in cp.pids.items() if name in ("etcd", "kube-apiserver", "kube-scheduler")}
    if "extender" in stack.procs:
        pids["extender"] = stack.procs["extender"].pid
    snapshot = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    own = os.times()
    snapshot["bench"] = own.user + own.system  # this process only: the others are its children
    snapshot["machine"], snapshot["wall x cpus"] = _machine_busy_seconds()
    return snapshot


def cpu_summary(before: dict[str, float], after: dict[str, float], pods: int) -> str:
    """CPU ms per pod of each component between two snapshots of one phase."""
    parts = []
    for name in ("kube-apiserver", "etcd", "kube-scheduler", "extender", "bench"):
        if name in before and name in after:
            parts.append(f"{name} {1000 * (after[name] - before[name]) / pods:.1f}")
    busy = after["machine"] - before["machine"]
    total = after["wall x cpus"] - before["wall x cpus"]
    return f"  CPU ms/pod: {', '.join(parts)}; whole machine {100 * busy / total:.0f}% busy (other users included)"


def apiserver_writes(cp: ControlPlane) -> dict[str, float]:
    """kube-apiserver's counters so far: ledger writes and Bindings (for writes per pod), and per
    ``verb resource[/subresource]`` the requests and per resource the watch events sent and their bytes
    (``--breakdown`` prints those per pod: where an RT pod's API server work goes)."""
    with urllib.request.urlopen(f"{cp.server}/metrics", timeout=10, context=cp.admin_ssl_context()) as r:
        text = r.read().decode()
    counts: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "apiserver_request_total":
                resource = labels.get("resource", "")
                if labels.get("subresource"):
                    resource += "/" + labels["subresource"]
                counts[f"request {labels.get('verb')} {resource}"] += sample.value
                if labels.get("resource") == "nodeallocationstates" and labels.get("verb") in ("PUT", "PATCH"):
                    counts["ledger writes"] += sample.value
                elif labels.get("resource") == "pods" and labels.get("subresource") == "binding":
                    counts["bindings"] += sample.value
            elif sample.name == "apiserver_watch_events_total":
                counts[f"watch events {labels.get('resource')}"] += sample.value
            elif sample.name == "apiserver_watch_events_sizes_sum":
                counts[f"watch bytes {labels.get('resource')}"] += sample.value
    return counts


def breakdown(before: dict[str, float], after: dict[str, float], pods: int) -> str:
    """Per pod, the requests and watch traffic that changed between two :func:`apiserver_writes`."""
    rows = []
    for key in sorted(after):
        if key in ("ledger writes", "bindings"):
            continue
        delta = (after[key] - before.get(key, 0.0)) / pods
        if delta >= 0.01:
            rows.append(f"    {key:<60} {delta:10.2f}")
    return "\n".join(rows)


def wait_all_bound(core: client.CoreV1Api, ns: str, count: int, resource_version: str, timeout: float) -> float:
    """Follow the namespace's pods from ``resource_version``; the monotonic time the last one was bound."""
    bound: set[str] = set()
    last = time.monotonic()
    deadline = last + timeout
    while len(bound) < count and time.monotonic() < deadline:
        stream = watch.Watch()
        try:
            for event in stream.stream(
                core.list_namespaced_pod,
                ns,
                resource_version=resource_version,
                timeout_seconds=max(1, int(deadline - time.monotonic())),
                allow_watch_bookmarks=True,
                deserialize=False,
            ):
                obj = event.get("object") or {}
                resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
                if event.get("type") in ("ADDED", "MODIFIED") and (obj.get("spec") or {}).get("nodeName"):
                    name = obj["metadata"]["name"]
                    if name not in bound:
                        bound.add(name)
                        last = time.monotonic()
                        if len(bound) >= count:
                            break
        finally:
            stream.stop()
    if len(bound) < count:
        raise SystemExit(f"{ns}: only {len(bound)} of {count} pods bound in {timeout:.0f}s")
    return last


def phase(
    cp: ControlPlane,
    stack: Stack,
    label: str,
    count: int,
    kind: str,
    qps: float,
    scoring: bool = False,
    show_breakdown: bool = False,
    burst: int | None = None,
) -> tuple[float, str, float]:
    """Pods/s of one phase, where the CPU went meanwhile, and the API server's CPU ms per pod."""
    core = client.CoreV1Api(stack.api)
    ns = namespace(label)
    core.create_namespace({"metadata": {"name": ns}})
    stop_scheduler(cp)
    resource = client.ResourceV1Api(stack.api)
    for i in range(count):
        pod_kind = MIXED[i % len(MIXED)] if kind == "mixed" else kind
        if pod_kind == "dra":
            resource.create_namespaced_resource_claim(ns, resource_claim(f"p-{i}"))
        core.create_namespaced_pod(ns, pod(f"p-{i}", pod_kind, scoring))
    listed: Any = core.list_namespaced_pod(ns, limit=1, _preload_content=False)
    version = str(json.loads(listed.data)["metadata"]["resourceVersion"])
    stack.dra_scoring = scoring
    config = stack.scheduler_config()
    if label in PICK:
        config["extenders"][0]["filterVerb"] = "pick"
    # The same client rate limit for both phases. kube-scheduler's default (50/s,
    # burst 100) caps the plain phase's Bindings but not the extender's, which
    # makes RT look better than it is: by default it is lifted for both.
    config["clientConnection"] = {"qps": qps, "burst": int(qps * 2) if burst is None else burst}
    writes = apiserver_writes(cp)
    cp.configure_scheduler(config)  # returns once kube-scheduler is ready
    start = time.monotonic()
    cpu = cpu_snapshot(cp, stack)
    last = wait_all_bound(core, ns, count, version, timeout=600)
    cpu_after = cpu_snapshot(cp, stack)
    writes_after = apiserver_writes(cp)
    per_pod = ", ".join(
        f"{k} {(writes_after.get(k, 0.0) - writes.get(k, 0.0)) / count:.2f}" for k in ("bindings", "ledger writes")
    )
    text = f"{cpu_summary(cpu, cpu_after, count)}\n  API writes per pod: {per_pod}"
    if show_breakdown:
        text += f"\n  API server per pod:\n{breakdown(writes, writes_after, count)}"
    api_ms = 1000 * (cpu_after["kube-apiserver"] - cpu["kube-apiserver"]) / count
    return count / (last - start), text, api_ms


def check_ledgers(stack: Stack, nodes: list[str], count: int) -> str:
    core = client.CoreV1Api(stack.api)
    rt = {}
    for label, _, _ in PHASES:
        wanted = set(pods_of_kind(label, "rt", count))
        if wanted:
            pods = core.list_namespaced_pod(namespace(label)).items
            rt.update({p.metadata.uid: p.spec.node_name for p in pods if p.metadata.name in wanted})
    held: dict[str, str] = {}
    for node in nodes:
        ledger = NodeLedger.from_nas(stack.nas(node) or {})
        for cpu in ledger.cpus:
            assert ledger.used(cpu) <= ledger.capacities[cpu], f"{node} cpu{cpu} overcommitted"
        for uid in ledger.pods:
            assert uid not in held, f"pod {uid} reserved on {held[uid]} and {node}"
            held[uid] = node
    assert held == rt, "ledgers and bindings disagree"
    return (
        f"{len(held)} of {len(rt)} RT pods reserved exactly once, on the node they are bound to; no CPU over capacity"
    )


def check_claims(stack: Stack, capacity: int) -> str:
    """Every DRA pod bound has its claim allocated on its node, and no CPU device is over its capacity."""
    core = client.CoreV1Api(stack.api)
    resource = client.ResourceV1Api(stack.api)
    used: dict[tuple[str, str], int] = defaultdict(int)
    allocated = 0
    for label, kind, _ in PHASES:
        if kind not in ("dra", "mixed"):
            continue
        ns = namespace(label)
        bound = {p.metadata.name: p.spec.node_name for p in core.list_namespaced_pod(ns).items}
        claims = json.loads(resource.list_namespaced_resource_claim(ns, _preload_content=False).data)["items"]
        for claim in claims:
            results = claim["status"]["allocation"]["devices"]["results"]
            assert {r["pool"] for r in results} == {bound[claim["metadata"]["name"]]}, "claim and pod disagree"
            for r in results:
                used[r["pool"], r["device"]] += dra.parse_quantity(r["consumedCapacity"][dra.CAPACITY])
            allocated += 1
    over = [device for device, total in used.items() if total > capacity]
    assert not over, f"CPU devices over capacity: {over}"
    return f"{allocated} DRA claims allocated on their pod's node; no CPU device over capacity"


def run(workdir: Path, binaries: Binaries, args: argparse.Namespace, capacity: int) -> tuple[dict[str, float], str]:
    """One run on a fresh control plane: pods/s per phase, and the extender summary + ledger and claim checks."""
    with ControlPlane(workdir, binaries, keep_workdir=args.workdir is not None) as cp:
        # The ledgers are written here, with no agents behind them: the agents' heartbeat check is off.
        stack = Stack(cp, [], extender_args=["--agent-lease-seconds", "0", *args.extender_arg], dra_scoring=True)
        try:
            apply(
                stack.api,
                [d for d in manifest_documents() if d["kind"] in ("Namespace", "CustomResourceDefinition", *DRA_KINDS)],
            )
            apply(stack.api, [d for d in manifest_documents() if d.get("metadata", {}).get("name") == "rtdra-extender"
                              and d["kind"] not in ("Deployment", "Service")])  # fmt: skip
            custom = client.CustomObjectsApi(stack.api)
            names_ = [f"node-{i:03d}" for i in range(args.nodes)]
            for name in names_:
                cp.create_node(name, cpu=str(args.cpus))
                nas = NodeLedger(node=name, capacities=dict.fromkeys(range(args.cpus), capacity)).to_nas(NAMESPACE)
                custom.create_namespaced_custom_object(
                    names.NAS_GROUP, names.NAS_VERSION, NAMESPACE, names.NAS_PLURAL, nas
                )
                client.ResourceV1Api(stack.api).create_resource_slice(resource_slice(name, args.cpus, capacity))
            stack.start_extender()
            rates: dict[str, float] = {}
            api_ms: dict[str, float] = {}
            details = []
            for label, kind, scoring in [p for name in args.phases for p in PHASES if p[0] == name]:
                before = extender_metrics(stack)
                qps, burst = args.scheduler_qps, None
                if label == SAME_RATE:  # the rt phase's rate, with little burst: the Bindings come at that pace
                    qps, burst = rates["rt"], max(1, int(rates["rt"] / 10))
                rates[label], cpu, api_ms[label] = phase(
                    cp, stack, label, args.pods, kind, qps, scoring, args.breakdown, burst
                )
                details.append(f"  {label}:\n{cpu}\n{extender_summary(before, extender_metrics(stack))}")
            if SAME_RATE in api_ms:
                details.append(
                    f"  API server CPU per pod at the same rate ({rates[SAME_RATE]:.0f} and {rates['rt']:.0f} pods/s): "
                    f"rt {api_ms['rt']:.1f} ms / plain {api_ms[SAME_RATE]:.1f} ms = "
                    f"{api_ms['rt'] / api_ms[SAME_RATE]:.2f} (goal <= 1.5)"
                )
            verdict = check_ledgers(stack, names_, args.pods)
            claims = check_claims(stack, capacity)
        finally:
            stack.stop()
    return rates, "\n".join(details) + f"\n  {verdict}\n  {claims}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--cpus", type=int, default=8)
    parser.add_argument(
        "--scheduler-qps",
        type=float,
        default=1000.0,
        help="kube-scheduler's API rate limit in both phases (its default 50 caps only the plain phase)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh control plane (default 1)")
    parser.add_argument("--workdir", type=Path, help="keep the control planes (and their logs) here")
    parser.add_argument(
        "--extender-arg", action="append", default=[], metavar="ARG", help="extra rtdra-extender flag (repeatable)"
    )
    parser.add_argument(
        "--phases",
        type=lambda text: text.split(","),
        default=[label for label, _, _ in PHASES],
        help=f"phases to run, in this order (default {','.join(label for label, _, _ in PHASES)}; plain is required)",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="per phase, the API server's requests and watch traffic per pod"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the goal is missed")
    args = parser.parse_args()
    known = [label for label, _, _ in PHASES]
    if "plain" not in args.phases or not set(args.phases) <= set(known):
        parser.error(f"--phases: a comma-separated list of {', '.join(known)}, with plain")
    if SAME_RATE in args.phases and ("rt" not in args.phases or args.phases.index("rt") > args.phases.index(SAME_RATE)):
        parser.error(f"--phases: {SAME_RATE} runs at the rt phase's rate: rt must come before it")

    binaries = ensure_binaries()
    capacity = measured_capacity()
    version = binaries.versions.get("kubernetes")
    print(f"# {args.pods} pods over {args.nodes} nodes x {args.cpus} CPUs, kube-scheduler {version}", flush=True)
    labels = list(args.phases)
    print(f"{'run':<5} " + " ".join(f"{label + ' pods/s':>18}" for label in labels), flush=True)
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="rtdra-bench-sched-") as tmp:
        base = args.workdir or Path(tmp)
        for k in range(1, args.repeat + 1):
            rates, summary = run(base / f"run-{k}", binaries, args, capacity)
            results.append(rates)
            print(f"{k:<5} " + " ".join(f"{rates[label]:>18.1f}" for label in labels), flush=True)
            print(summary, flush=True)
    what = {
        "plain": "plain (kube-scheduler)",
        "plain+score": "plain, DRA scoring entry on",
        "rt": "rt (extender: filter+bind)",
        "rt+pick": "rt, filterVerb: pick",
        SAME_RATE: "plain at the rt rate",
        "dra": "dra (DRA plugin)",
        "dra+score": "dra + extender DRA scoring",
        "mixed": "mixed: plain, rt, dra+score",
    }
    print(f"{'pods':<30} {'pods/s':>8} {'ratio':>6}")
    ratios = {}
    for label in labels:
        ratios[label] = statistics.median(r[label] / r["plain"] for r in results)
        rate = statistics.median(r[label] for r in results)
        goal = f"   goal >= {GOAL_RATIO}" if label in ("rt", *PICK) else ""
        print(f"{what[label]:<30} {rate:>8.1f} {ratios[label]:>6.2f}{goal}")
    if args.repeat > 1:
        print(f"(medians of {args.repeat} runs; each ratio is the median of the per-run ratios to plain)")
    return 1 if args.check and ratios.get("rt", GOAL_RATIO) < GOAL_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
