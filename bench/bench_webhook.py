#!/usr/bin/env python3
"""Admission latency of the RT-DRA webhook, against a floor measured in the same run.

The pod has 4 real-time containers (and a sidecar). Two ways in:

- in-process: Flask's test client calls ``POST /mutate``; the floor is
  ``POST /floor`` (decode the review, allow, no patch), a route this benchmark
  adds to the webhook's own app (:func:`floor_app`; the product has none);
- over HTTPS: that app under gunicorn exactly as ``rtdra-webhook`` runs it
  (``rtdra.serve``, the webhook's TLS context) on 127.0.0.1, a keep-alive
  client (kube-apiserver reuses its connections); ``/mutate`` and ``/floor``
  requests alternate so both see the same noise.

Goals: p99 of ``/mutate`` within 2x the floor's p99, and under 10 ms over HTTPS.
Prints a table; exits 0 (it is a measurement, not a test) unless ``--check``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402
from flask import Flask, Response, jsonify, request  # noqa: E402

from rtdra import serve  # noqa: E402
from rtdra.cli import main as rtdra_main  # noqa: E402
from webhook.admission import Lookups, admit, encode_review, parse_review  # noqa: E402
from webhook.app import create_app  # noqa: E402
from webhook.config import WebhookConfig, WebhookServer  # noqa: E402

RT_CONTAINERS = ("rx", "tx", "ctl", "log")


def review() -> dict[str, Any]:
    containers = [
        {"name": n, "image": "registry.k8s.io/pause:3.10", "resources": {}, "imagePullPolicy": "IfNotPresent"}
        for n in (*RT_CONTAINERS, "sidecar")
    ]
    annotations = {
        f"rt.resource.example.com/container.{n}": f"runtime={i + 1}ms,period=10ms" for i, n in enumerate(RT_CONTAINERS)
    }
    annotations["rt.resource.example.com/container.ctl"] = "runtime=500us,period=5ms,deadline=2ms,cpus=2"
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "bench",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "bench"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": "bench-", "namespace": "default", "annotations": annotations},
                "spec": {"containers": containers, "schedulerName": "default-scheduler"},
            },
            "oldObject": None,
            "dryRun": False,
        },
    }


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50": ordered[len(ordered) // 2] * 1e3,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3,
        "mean": statistics.fmean(ordered) * 1e3,
    }


def floor() -> Response:
    """The baseline: decode the review, allow it, patch nothing."""
    decoded = parse_review(request.get_data(cache=False))
    return jsonify(encode_review({"uid": decoded["uid"], "allowed": True}))


def floor_app(config: WebhookConfig | None = None) -> Flask:
    """The webhook's app with ``POST /floor`` beside ``/mutate``."""
    app = create_app(config or WebhookConfig(), Lookups())
    app.add_url_rule("/floor", view_func=floor, methods=["POST"])
    return app


def serve_https(port: int, cert: str, key: str, workers: int, threads: int) -> None:
    """Run :func:`floor_app` as ``rtdra-webhook`` runs its app (``--serve-https``, in a child process)."""
    from webhook.tls import gunicorn_ssl_context

    bind = f"127.0.0.1:{port}"
    listen = WebhookServer(bind, workers, threads, log_level="warning", tls_cert_file=cert, tls_key_file=key)
    options = serve.gunicorn_options("rtdra-webhook-bench", listen, ssl_context=gunicorn_ssl_context)
    serve.run(options, lambda: floor_app(WebhookConfig(tls_cert=cert)))


def in_process(n: int) -> dict[str, list[float]]:
    body = review()
    config = WebhookConfig()
    client = floor_app(config).test_client()
    out: dict[str, list[float]] = {"/floor": [], "/mutate": [], "admit()": []}
    for _ in range(200):  # warm-up
        client.post("/mutate", json=body)
        client.post("/floor", json=body)
    for _ in range(n):
        for path in ("/floor", "/mutate"):
            t0 = time.perf_counter()
            reply = client.post(path, json=body)
            out[path].append(time.perf_counter() - t0)
            assert reply.status_code == 200
        t0 = time.perf_counter()
        admit(body["request"], config, Lookups())
        out["admit()"].append(time.perf_counter() - t0)
    return out


def over_https(n: int, workers: int, threads: int) -> dict[str, list[float]]:
    body = review()
    with tempfile.TemporaryDirectory(prefix="rtdra-bench-") as tmp:
        certs = Path(tmp)
        with contextlib.redirect_stdout(io.StringIO()):
            rtdra_main(
                [
                    "certs",
                    "--service",
                    "rtdra-webhook",
                    "--namespace",
                    "rt-dra",
                    "--ip",
                    "127.0.0.1",
                    "--out",
                    str(certs),
                ]
            )
        ca = str(certs / "ca.crt")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = (certs / "server.log").open("wb")
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-https",
                str(port),
                str(certs / "tls.crt"),
                str(certs / "tls.key"),
                "--workers",
                str(workers),
                "--threads",
                str(threads),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"https://127.0.0.1:{port}"
            session = requests.Session()  # verify= on each call: REQUESTS_CA_BUNDLE would override session.verify
            deadline = time.monotonic() + 20
            while True:
                try:
                    if session.get(url + "/healthz", verify=ca, timeout=1).ok:
                        break
                except requests.RequestException:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit(f"rtdra-webhook did not start: {(certs / 'server.log').read_text()}") from None
                    time.sleep(0.1)
            out: dict[str, list[float]] = {"/floor": [], "/mutate": [], "/mutate new TLS conn": []}
            for _ in range(200):
                session.post(url + "/mutate", json=body, verify=ca)
                session.post(url + "/floor", json=body, verify=ca)
            for i in range(n):
                for path in ("/floor", "/mutate"):
                    t0 = time.perf_counter()
                    reply = session.post(url + path, json=body, verify=ca, timeout=5)
                    out[path].append(time.perf_counter() - t0)
                    assert reply.status_code == 200
                if i % 10 == 0:  # a fresh connection now and then: what a handshake costs
                    t0 = time.perf_counter()
                    requests.post(url + "/mutate", json=body, verify=ca, timeout=5)
                    out["/mutate new TLS conn"].append(time.perf_counter() - t0)
            return out
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)
            log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="requests per endpoint and way (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--serve-https", nargs=3, metavar=("PORT", "CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_https:
        port, cert, key = args.serve_https
        serve_https(int(port), cert, key, args.workers, args.threads)
        return 0

    results = {"in-process": in_process(args.n), "https": over_https(args.n, args.workers, args.threads)}
    met = True
    print(f"# webhook admission latency, pod with {len(RT_CONTAINERS)} RT containers, n={args.n} per row")
    print(f"{'way':<11} {'endpoint':<22} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'p99/floor':>9}  goal")
    for way, samples in results.items():
        floor = stats(samples["/floor"])
        for endpoint, values in samples.items():
            s = stats(values)
            ratio = s["p99"] / floor["p99"]
            goal = ""
            if endpoint == "/mutate":
                ok = ratio <= 2.0 and (way != "https" or s["p99"] < 10.0)
                met &= ok
                goal = ("met" if ok else "MISSED") + (" (<=2x floor, <10 ms)" if way == "https" else " (<=2x floor)")
            figures = f"{s['n']:>6} {s['p50']:>8.3f} {s['p99']:>8.3f} {s['mean']:>8.3f} {ratio:>9.2f}"
            print(f"{way:<11} {endpoint:<22} {figures}  {goal}")
    print(
        f"# gunicorn gthread, {args.workers} workers x {args.threads} threads, TLS 1.3 ECDSA P-256, keep-alive client"
    )
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
