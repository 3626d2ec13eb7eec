"""The ``rtdra`` command: tools for pod authors and operators.

- ``rtdra validate [-f FILE]``: check a pod's real-time request before ``kubectl apply``;
- ``rtdra simulate``: compare placement policies on a random online stream;
- ``rtdra certs``: make the webhook's CA and serving certificate (see ``rtdra.certs``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from rtdra import certs, names, simulate
from rtdra.bandwidth import BW_UNIT, bandwidth, cpu_capacity
from rtdra.request import InvalidRequest, parse_pod

EXIT_INVALID = 2


def _pods_in(documents: Sequence[Any]) -> Iterator[Mapping[str, Any]]:
    """Pods, and the pod templates of workloads (Deployment, Job, ...), in a manifest."""
    for doc in documents:
        if not isinstance(doc, Mapping):
            continue
        if doc.get("kind") == "List":
            yield from _pods_in(doc.get("items") or [])
        elif doc.get("kind") == "Pod":
            yield doc
        else:
            spec = doc.get("spec") or {}
            template = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get("template")
            if isinstance(template, Mapping):
                meta = dict(template.get("metadata") or {})
                meta.setdefault("name", (doc.get("metadata") or {}).get("name", ""))
                meta.setdefault("namespace", (doc.get("metadata") or {}).get("namespace"))
                yield {**template, "metadata": meta}


def _claim_parameters(documents: Sequence[Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """``RtClaimParameters`` objects given in the same manifest, by (namespace, name)."""
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    for doc in documents:
        if isinstance(doc, Mapping) and doc.get("kind") == names.CLAIM_PARAMETERS_KIND:
            meta = doc.get("metadata") or {}
            found[(str(meta.get("namespace") or "default"), str(meta.get("name")))] = doc.get("spec") or {}
    return found


def validate_command(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()  # noqa: SIM115
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        print(f"{args.file}: not YAML or JSON: {err}".replace("\n", " "))
        return EXIT_INVALID
    params = _claim_parameters(documents)
    pods = list(_pods_in(documents))
    if not pods:
        print(f"{args.file}: no Pod (or pod template) found")
        return EXIT_INVALID
    status = 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        label = meta.get("name") or meta.get("generateName") or "pod"
        try:
            request = parse_pod(pod, lambda ns, name: params.get((ns, name)))
        except InvalidRequest as err:
            for problem in err.problems:
                print(f"{label}: {problem}" if len(pods) > 1 else str(problem))
            status = EXIT_INVALID
            continue
        spec = request.spec_json() if request is not None else "{}"
        print(f"{label}: {spec}" if len(pods) > 1 else spec)
    return status


def simulate_command(args: argparse.Namespace) -> int:
    reserved = bandwidth(args.reserved_runtime_us, args.reserved_period_us)
    capacity = cpu_capacity(args.rt_runtime_us, args.rt_period_us, reserved)
    mix = tuple((int(c), float(w)) for c, w in (item.split(":") for item in args.mix.split(",")))
    rows = []
    for load in args.load or [0.6, 0.8, 1.0]:
        workload = simulate.Workload(
            nodes=args.nodes,
            cpus=args.cpus,
            capacity=capacity,
            load=load,
            arrivals=args.arrivals,
            mix=mix,
            constrained=args.constrained,
            seed=args.seed,
        )
        rows += [(load, outcome) for outcome in simulate.compare(workload)]
    print(
        f"# {args.nodes} nodes x {args.cpus} CPUs, capacity {capacity} per CPU "
        f"({capacity * 100 / BW_UNIT:.2f}%), {args.arrivals} arrivals per load, mix {args.mix}, seed {args.seed}"
    )
    print(simulate.table(rows))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtdra", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a Pod manifest's real-time request; print the canonical spec")
    v.add_argument("-f", "--file", default="-", help="Pod manifest (YAML or JSON); - for standard input")
    v.set_defaults(func=validate_command)

    s = sub.add_parser("simulate", help="compare placement policies on a random online stream of RT pods")
    s.add_argument("--nodes", type=int, default=10)
    s.add_argument("--cpus", type=int, default=8, help="CPUs per node")
    s.add_argument("--load", type=float, action="append", help="offered load (repeatable; default 0.6 0.8 1.0)")
    s.add_argument("--arrivals", type=int, default=4000, help="pods per load")
    s.add_argument("--mix", default="1:0.6,2:0.3,4:0.1", help="cpus:weight,... of the pod sizes")
    s.add_argument("--constrained", type=float, default=0.0, help="share of pods with deadline < period")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--rt-runtime-us", type=int, default=950_000, help="kernel.sched_rt_runtime_us")
    s.add_argument("--rt-period-us", type=int, default=1_000_000, help="kernel.sched_rt_period_us")
    s.add_argument("--reserved-runtime-us", type=int, default=50_000, help="kernel server runtime per CPU")
    s.add_argument("--reserved-period-us", type=int, default=1_000_000, help="kernel server period")
    s.set_defaults(func=simulate_command)

    certs.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FileNotFoundError as err:
        print(f"rtdra: {err.strerror}: {err.filename}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
