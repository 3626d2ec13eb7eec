#!/usr/bin/env python3
"""``make demo``: the whole RT-DRA chain on a local, real control plane.

Builds (or reuses) the upstream Kubernetes programs, starts etcd,
kube-apiserver, kube-scheduler and kube-controller-manager on 127.0.0.1, runs
the webhook, the scheduler extender and one node agent per node - the first
node, ``rt-node-0``, is this machine as a real Kubernetes node (upstream
kubelet, containerd and runc; real containers under real SCHED_DEADLINE
reservations); the others are simulated, for scale - applies the four demo
apps (``demo/rt-test1.yaml`` ...) and prints where each pod landed, which CPUs
it holds, whether the kernel reservation is in place (on the real node: the
container's host pid, from containerd, checked with ``sched_getattr``), and
each node's reserved bandwidth per CPU.

Then the same machine serves as a node in DRA mode (docs/dra-node.md): the
fifth app (``demo/rt-test5.yaml``, the old driver's rt-test1 as a
ResourceClaimTemplate with RtClaimParameters) is completed by the webhook,
allocated by kube-scheduler's own DRA allocator, prepared by the agent as
kubelet's DRA plugin, and checked in the kernel the same way. Then it tears
everything down.

The apps name ``busybox:1.36``; nothing is pulled here (no registry): the demo
runs them in the node's local image (busybox from the host's Debian package,
``imagePullPolicy: Never``) and says so.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hack.cluster import ControlPlane  # noqa: E402
from hack.k8sbins import ensure_binaries  # noqa: E402
from hack.stack import NodeSpec, Stack, apply, wait_for  # noqa: E402
from rtdra import dra, names  # noqa: E402
from rtdra.bandwidth import BW_UNIT, format_ns, percent  # noqa: E402
from rtdra.ledger import NodeLedger  # noqa: E402
from rtdra.request import Reservation  # noqa: E402

APPS = (
    ("rt-test1", "two pods, one container each, 2 CPUs at 100us every 1ms"),
    ("rt-test2", "one pod, two containers; one with deadline < period"),
    ("rt-test3", "a Deployment needing more bandwidth than one node has"),
    ("rt-test4", "the old driver's RtClaimParameters"),
)
DRA_APP = ("rt-test5", "DRA mode: the old driver's rt-test1 as a ResourceClaimTemplate, 2 CPUs at 100us every 1ms")
BAR = 40
#: Waiting reasons of a container that is still being started, not refused.
STARTING = frozenset({"ContainerCreating", "PodInitializing"})


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def settled(core: client.CoreV1Api, namespace: str, expect: int) -> list[client.V1Pod] | None:
    """The namespace's pods once there are ``expect`` and each is Running or has given up scheduling."""
    pods = core.list_namespaced_pod(namespace).items
    if len(pods) < expect:
        return None
    for pod in pods:
        if pod.status.phase == "Running":
            continue
        conditions = {c.type: c for c in pod.status.conditions or []}
        scheduled = conditions.get("PodScheduled")
        if scheduled is not None and scheduled.status == "False" and scheduled.reason == "Unschedulable":
            continue
        waiting = [s.state.waiting for s in pod.status.container_statuses or [] if s.state and s.state.waiting]
        if any(w.reason not in STARTING for w in waiting):
            continue  # the node refused to start it (e.g. the kernel refused the reservation)
        return None
    return pods


def scheduling_reason(core: client.CoreV1Api, pod: client.V1Pod) -> str:
    events = core.list_namespaced_event(
        pod.metadata.namespace, field_selector=f"involvedObject.uid={pod.metadata.uid}"
    ).items
    failed = [e for e in events if e.reason in ("FailedScheduling", "Failed")]
    if failed:
        return failed[-1].message
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled" and c.message:
            return str(c.message)
    return "pending"


def kernel_state(stack: Stack, node: NodeSpec, pod: client.V1Pod, container: str) -> str:
    """What the node did with the reservation, checked in the kernel where it is real."""
    nas = stack.nas(node.name) or {}
    record = ((nas.get("spec") or {}).get("preparedClaims") or {}).get(pod.metadata.uid, {})
    applied = (record.get("containers") or {}).get(container)
    if not applied:
        return "not applied"
    if applied.get("error"):
        return f"REFUSED: {applied['error']}"
    if node.backend != "deadline":
        return "accounted (simulated node)"
    from rtdra.sched import sched_getattr  # noqa: PLC0415 - only where the kernel is real

    slots = applied.get("slots") or []
    want = {(s.get("runtimeNs"), s.get("deadlineNs"), s.get("periodNs")) for s in slots}
    if node.real:  # the container's process as the runtime knows it, not as the agent recorded it
        pid = stack.real[node.name].container_pid(pod, container)
        if pid is None:
            return "MISMATCH: the container does not run"
        attr = sched_getattr(pid)
        if attr.is_deadline and (attr.runtime_ns, attr.deadline_ns, attr.period_ns) in want:
            return f"SCHED_DEADLINE, container pid {pid} (from containerd), checked with sched_getattr"
        return f"MISMATCH: container pid {pid} runs {attr.policy_name}"
    tasks = applied.get("tasks") or []
    good = 0
    for task in tasks:
        try:
            attr = sched_getattr(int(task["tid"]))
        except OSError:
            continue
        if attr.is_deadline and (attr.runtime_ns, attr.deadline_ns, attr.period_ns) in want:
            good += 1
    if tasks and good == len(tasks):
        return f"SCHED_DEADLINE on {good} task(s), checked with sched_getattr"
    return f"MISMATCH: {good} of {len(tasks)} task(s) under SCHED_DEADLINE"


def localise(docs: list[dict[str, Any]], image: str) -> list[dict[str, Any]]:
    """The demo apps with every container in the node's local image, never pulled (there is no registry)."""
    for doc in docs:
        spec = doc.get("spec") or {}
        pod_spec = (spec.get("template") or {}).get("spec") if doc["kind"] != "Pod" else spec
        for c in (pod_spec or {}).get("containers") or []:
            c["image"], c["imagePullPolicy"] = image, "Never"
    return docs


def report_app(stack: Stack, nodes: Mapping[str, NodeSpec], namespace: str, pods: Sequence[client.V1Pod]) -> None:
    core = client.CoreV1Api(stack.api)
    rows = [("POD", "CONTAINER", "NODE", "CPUS", "RUNTIME/DEADLINE/PERIOD", "KERNEL RESERVATION")]
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        annotations = pod.metadata.annotations or {}
        spec = yaml.safe_load(annotations.get(names.SPEC, "{}")) or {}
        allocation = yaml.safe_load(annotations.get(names.ALLOCATION, "{}")) or {}
        node = pod.spec.node_name
        for container in sorted(spec):
            r = spec[container]
            timing = f"{format_ns(r['runtime'])}/{format_ns(r['deadline'])}/{format_ns(r['period'])}"
            if node is None:
                rows.append(
                    (pod.metadata.name, container, "-", "-", timing, "PENDING: " + scheduling_reason(core, pod))
                )
                continue
            cpus = ",".join(
                str(c) for c in (allocation.get("containers", allocation).get(container) or {}).get("cpus", [])
            )
            state = kernel_state(stack, nodes[node], pod, container)
            rows.append((pod.metadata.name, container, node, cpus or "?", timing, state))
    print_rows(rows)


def report_nodes(stack: Stack, nodes: Sequence[NodeSpec]) -> None:
    print("\n== reserved deadline bandwidth per node and CPU (# reserved, . free, | the kernel's limit)")
    print(f"  {'NAME':<12} {'CPUS':>4} {'RESERVED':>9} {'PODS':>4}  STATUS")
    ledgers = {}
    for node in nodes:
        obj = stack.nas(node.name) or {}
        ledgers[node.name] = NodeLedger.from_nas(obj)
        s = obj.get("summary") or {}
        cells = f"{s.get('cpus', 0):>4} {s.get('reserved', '-'):>9} {s.get('pods', 0):>4}"
        print(f"  {node.name:<12} {cells}  {obj.get('status')}")
    for node in nodes:
        ledger = ledgers[node.name]
        kind = (
            "this machine: kubelet + containerd + runc, real SCHED_DEADLINE"
            if node.real
            else ("this machine's kernel, real SCHED_DEADLINE" if node.backend == "deadline" else "simulated")
        )
        print(f"\n  {node.name} ({kind})")
        for cpu in ledger.cpus:
            used, cap = ledger.used(cpu), ledger.capacities[cpu]
            filled = round(used * BAR / BW_UNIT)
            limit = round(cap * BAR / BW_UNIT)
            bar = "".join("#" if i < filled else ("|" if i == limit else ".") for i in range(BAR))
            print(f"    cpu{cpu:<3} [{bar}] {percent(used):>6} of {percent(cap)}")


def delete_apps(stack: Stack, namespaces: Sequence[str]) -> None:
    """Delete the apps' namespaces and wait for their pods to go (the node releases what they held)."""
    core = client.CoreV1Api(stack.api)
    for namespace in namespaces:
        for pod in core.list_namespaced_pod(namespace).items:  # sleep as pid 1 ignores SIGTERM: no 30 s wait
            core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=1)
        core.delete_namespace(namespace)
    wait_for(
        "the apps' pods gone",
        lambda: not any(core.list_namespaced_pod(ns).items for ns in namespaces),
        timeout=120,
    )


def pod_claims(stack: Stack, pod: client.V1Pod) -> list[tuple[str, dict[str, Any]]]:
    """The pod's ResourceClaims (made from its templates) as the API has them, by the pod's name for each."""
    custom = client.CustomObjectsApi(stack.api)
    return [
        (
            status.name,
            custom.get_namespaced_custom_object(
                "resource.k8s.io", "v1", pod.metadata.namespace, "resourceclaims", status.resource_claim_name
            ),
        )
        for status in pod.status.resource_claim_statuses or []
        if status.resource_claim_name
    ]


def dra_kernel_state(stack: Stack, node: str, pod: client.V1Pod, container: str, want: Reservation) -> str:
    """The container's process, from containerd, under the claim's SCHED_DEADLINE parameters?"""
    from rtdra.sched import sched_getattr  # noqa: PLC0415 - only where the kernel is real

    pid = stack.real[node].container_pid(pod, container)
    if pid is None:
        return "MISMATCH: the container does not run"
    attr = sched_getattr(pid)
    if attr.is_deadline and (attr.runtime_ns, attr.deadline_ns, attr.period_ns) == (
        want.runtime_ns,
        want.deadline_ns,
        want.period_ns,
    ):
        return f"SCHED_DEADLINE, container pid {pid} (from containerd), checked with sched_getattr"
    return f"MISMATCH: container pid {pid} runs {attr.policy_name}"


def report_dra_app(stack: Stack, template: Mapping[str, Any], pods: Sequence[client.V1Pod]) -> None:
    """What the webhook wrote into the template; per claim, the CPUs and bandwidth the stock scheduler
    allocated, and the kernel's view of each container that uses it."""
    core = client.CoreV1Api(stack.api)
    for request in template["spec"]["spec"]["devices"]["requests"]:
        exactly = request.get("exactly") or {}
        booked = ((exactly.get("capacity") or {}).get("requests") or {}).get(dra.CAPACITY, "none")
        print(
            f"  the webhook completed ResourceClaimTemplate {template['metadata']['name']}, request "
            f"{request['name']}: count {exactly.get('count', '?')}, capacity request {dra.CAPACITY}={booked} per CPU"
        )
    rows = [("POD", "CONTAINER", "NODE", "CPUS (CONSUMED)", "RUNTIME/DEADLINE/PERIOD", "KERNEL RESERVATION")]
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        node = pod.spec.node_name
        if node is None:
            reason = "PENDING: " + scheduling_reason(core, pod)
            rows += [(pod.metadata.name, c.name, "-", "-", "-", reason) for c in pod.spec.containers]
            continue
        for pod_claim, claim in pod_claims(stack, pod):
            devices = dra.allocated_devices(claim, node)
            if not devices:
                continue
            want = dra.reservation_from_parameters(dra.request_parameters(claim, devices[0].request), "demo")
            timing = f"{format_ns(want.runtime_ns)}/{format_ns(want.deadline_ns)}/{format_ns(want.period_ns)}"
            cpus = ", ".join(f"{d.cpu} ({percent(d.consumed)})" for d in devices)
            for container in pod.spec.containers:
                if pod_claim not in {c.name for c in (container.resources.claims or [])}:
                    continue
                state = dra_kernel_state(stack, node, pod, container.name, want)
                rows.append((pod.metadata.name, container.name, node, cpus, timing, state))
    print_rows(rows)


def print_rows(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


def load_app(app: str, image: str) -> list[dict[str, Any]]:
    path = REPO / "demo" / f"{app}.yaml"
    return localise([d for d in yaml.safe_load_all(path.read_text()) if d], image)


def run(args: argparse.Namespace) -> int:
    say("building or reusing kube-apiserver, kube-scheduler, kube-controller-manager and etcd")
    binaries = ensure_binaries()
    versions = binaries.versions
    say(f"control plane: Kubernetes {versions.get('kubernetes', '?')}, etcd {versions.get('etcd', '?')}")
    nodes = [
        NodeSpec("rt-node-0", "deadline", real=True),
        *(NodeSpec(f"sim-node-{i}", "none", cpus=args.sim_cpus) for i in range(1, args.sim_nodes + 1)),
    ]
    with tempfile.TemporaryDirectory(prefix="rtdra-demo-") as tmp:
        cp = ControlPlane(Path(tmp) / "cluster", binaries, controller_manager=True)
        say("starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1")
        with cp:
            say(f"control plane ready in {cp.start_seconds:.1f}s at {cp.server}")
            with Stack(cp, nodes, progress=say, extender_args=("--reconcile-interval-seconds", "2")) as stack:
                core = client.CoreV1Api(stack.api)
                by_name = {n.name: n for n in nodes}
                for app, title in APPS:
                    docs = load_app(app, stack.image)
                    say(f"applying demo/{app}.yaml: {title} (image {stack.image}, never pulled)")
                    apply(stack.api, docs)
                    expect = sum(
                        d.get("spec", {}).get("replicas", 1) if d["kind"] == "Deployment" else 1
                        for d in docs
                        if d["kind"] in ("Pod", "Deployment")
                    )
                    pods = wait_for(f"{app} settled", lambda a=app, e=expect: settled(core, a, e), timeout=120)
                    print(f"\n== {app}: {title}")
                    report_app(stack, by_name, app, pods)
                    print()
                report_nodes(stack, nodes)
                print()
                say("deleting the four apps: the agents release their reservations")
                delete_apps(stack, [app for app, _ in APPS])
                for node in nodes[1:]:
                    core.delete_node(node.name)  # the simulated nodes go with the extender-mode stack
                say("stopping the extender-mode node: kubelet, containerd, the agent")
            # A node serves one mode at a time: the same machine again, now in DRA mode.
            dra_node = NodeSpec("rt-node-0", "deadline", real=True, mode="dra")
            say("DRA mode: this machine as a node whose CPUs are ResourceSlice devices (docs/dra-node.md)")
            with Stack(cp, [dra_node], progress=say) as stack:
                core = client.CoreV1Api(stack.api)
                app, title = DRA_APP
                docs = load_app(app, stack.image)
                say(f"applying demo/{app}.yaml: {title} (image {stack.image}, never pulled)")
                apply(stack.api, docs)
                pods = wait_for(f"{app} settled", lambda: settled(core, app, 1), timeout=120)
                template = client.CustomObjectsApi(stack.api).get_namespaced_custom_object(
                    "resource.k8s.io", "v1", app, "resourceclaimtemplates", docs[1]["metadata"]["name"]
                )
                print(f"\n== {app}: {title}")
                report_dra_app(stack, template, pods)
                print()
                say("deleting the app: kubelet unprepares its claim, the agent releases the reservation")
                delete_apps(stack, [app])
                say("tearing down: kubelet and containerd stop; the agent withdraws its ResourceSlices")
        say("done: every process stopped, every reservation released, temporary files removed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim-nodes", type=int, default=2, help="simulated nodes beside this machine")
    parser.add_argument("--sim-cpus", type=int, default=2, help="CPUs of each simulated node")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
