"""Prometheus metrics of the webhook: admissions by outcome, and their latency.

Each app gets its own registry (tests create many apps). Under gunicorn with
several workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by :mod:`webhook.cli`
before ``prometheus_client`` is imported, values live in shared files, and
``/metrics`` aggregates them across workers.
"""

from __future__ import annotations

import os
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

Outcome = Literal["allowed", "mutated", "denied", "bad_request"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("allowed", "mutated", "denied", "bad_request")
#: Admission is on the pod-create path: resolve the sub-millisecond range.
_BUCKETS: Final = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.admissions = Counter(
            "rtdra_webhook_admissions",
            "AdmissionReviews answered, by outcome (allowed: no patch; mutated: patched; denied; bad_request).",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rtdra_webhook_admission_duration_seconds",
            "Time from receiving an AdmissionReview to having its answer, in seconds.",
            ["outcome"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        for outcome in OUTCOMES:  # export zeros, so rates exist before the first event
            self.admissions.labels(outcome)
            self.latency.labels(outcome)

    def observe(self, outcome: Outcome, seconds: float) -> None:
        self.admissions.labels(outcome).inc()
        self.latency.labels(outcome).observe(seconds)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))
