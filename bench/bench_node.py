"""Benchmark: pod start on the real node, RT-DRA pod against a plain pod, same run.

On a real node (upstream kubelet + containerd + runc on this machine, see
``hack/node.py``) it creates pods one at a time, alternating a plain pod and an
RT pod (so load from elsewhere hits both alike), and times each from the
create call to the moment the API shows it Running - for the RT pod that is
also the moment its container runs under SCHED_DEADLINE, which the agent
applies before the program starts (checked for every RT pod: the container's
host pid, from containerd, with ``sched_getattr``). Each pod is deleted before
the next one starts. Root only.

Goal: median RT pod ≤ 1.2× the median plain pod.

What the difference is made of (measured here): scheduling (webhook, extender)
adds about 10 ms; the rest is on the node. The reservation is applied by the
CDI ``createRuntime`` hook - before the container's program starts, so it
never runs unreserved - and from then on the rest of runc's set-up (its init
process pivots, mounts, waits for ``start``, then execs the program) runs
under the container's own reservation: at 1 ms every 10 ms that set-up takes
about ten times its CPU time. With runtime=9ms,period=10ms the RT pod starts
within 1.1× of a plain pod; at 1ms/10ms 1.3×. Applying the policy later,
right before exec, is what runc does for OCI ``process.scheduler`` (the NRI
path of the agent can ask for it).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from kubernetes import client, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hack.stack import NodeSpec, running_stack, wait_for  # noqa: E402
from rtdra import names, sched  # noqa: E402

NODE = NodeSpec("rt-node-0", "deadline", real=True)
NS = "bench-node"


def time_to_running(core: client.CoreV1Api, body: dict, timeout: float = 120) -> tuple[float, float, client.V1Pod]:
    """Seconds from the create call to the first watch events that show the pod bound, and Running."""
    name = body["metadata"]["name"]
    w = watch.Watch()
    start = time.perf_counter()
    bound = 0.0
    core.create_namespaced_pod(NS, body)
    try:
        for event in w.stream(
            core.list_namespaced_pod, NS, field_selector=f"metadata.name={name}", timeout_seconds=int(timeout)
        ):
            pod = event["object"]
            if pod.spec.node_name and not bound:
                bound = time.perf_counter() - start
            if pod.status.phase == "Running":
                return bound, time.perf_counter() - start, pod
    finally:
        w.stop()
    raise TimeoutError(f"{name} not Running within {timeout}s")


def delete(core: client.CoreV1Api, name: str) -> None:
    core.delete_namespaced_pod(name, NS, grace_period_seconds=0)
    wait_for(f"{name} gone", lambda: name not in {p.metadata.name for p in core.list_namespaced_pod(NS).items})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20, help="pods of each kind")
    parser.add_argument("--request", default="runtime=1ms,period=10ms", help="the RT pods' reservation")
    parser.add_argument("--mode", choices=("nri", "cdi"), default="nri", help="how the agent hears of containers")
    args = parser.parse_args()

    def progress(message: str) -> None:
        print(f"[bench-node] {message}", flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="rtdra-bench-node-") as tmp,
        running_stack(
            Path(tmp) / "cp", [replace(NODE, mode=args.mode)], progress=lambda m: print(f"[bench-node] {m}", flush=True)
        ) as stack,
    ):
        core = client.CoreV1Api(stack.api)
        core.create_namespace({"metadata": {"name": NS, "labels": {names.NAMESPACE_OPT_IN_LABEL: "true"}}})
        times: dict[str, list[float]] = {"plain": [], "rt": []}
        bind: dict[str, list[float]] = {"plain": [], "rt": []}
        real = stack.real[NODE.name]
        for i in range(args.pods):
            for kind in ("plain", "rt"):
                name = f"{kind}-{i}"
                body = {"metadata": {"name": name}, "spec": stack.pod_spec([{"name": "app"}])}
                if kind == "rt":
                    body["metadata"]["annotations"] = {f"{names.CONTAINER_PREFIX}app": args.request}
                bound, elapsed, pod = time_to_running(core, body)
                if kind == "rt":
                    pid = real.container_pid(pod, "app")
                    attr = sched.sched_getattr(pid) if pid else None
                    if attr is None or not attr.is_deadline:
                        raise SystemExit(f"{name}: Running but its container is not under SCHED_DEADLINE")
                times[kind].append(elapsed)
                bind[kind].append(bound)
                with contextlib.suppress(Exception):
                    delete(core, name)
    plain, rt = statistics.median(times["plain"]), statistics.median(times["rt"])
    print(
        f"\npod start on the real node ({args.pods} pods each, interleaved; "
        f"RT pods {args.request}, agent mode {args.mode})"
    )
    print(f"  {'kind':<26} {'create->bound':>13} {'create->Running':>15} {'max':>7}   (medians, seconds)")
    for kind, label in (("plain", "plain pod"), ("rt", "RT pod (SCHED_DEADLINE)")):
        print(
            f"  {label:<26} {statistics.median(bind[kind]):>13.3f} {statistics.median(times[kind]):>15.3f}"
            f" {max(times[kind]):>7.3f}"
        )
    print(f"  RT / plain, create -> Running: {rt / plain:.2f}x (goal: <= 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
