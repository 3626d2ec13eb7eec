"""Prometheus metrics of the extender (``GET /metrics``).

- ``rtdra_extender_requests_total{verb,code}`` and
  ``rtdra_extender_request_duration_seconds{verb}``: every HTTP call by verb;
- ``rtdra_extender_filter_rejections_total{reason}``: nodes filtered out, by a
  short reason class (``insufficient_bandwidth``, ``in_flight``, ``no_ledger``, ``not_ready``,
  ``agent_silent``, ``invalid_request``, ``no_rt_cpus``, ``other``) - never the free text, which
  would make one series per node;
- ``rtdra_extender_binds_total{result}`` (``bound``, ``already_bound``,
  ``error``), ``rtdra_extender_bind_conflicts_total`` (409s met by the
  compare-and-swap), ``rtdra_extender_bind_rollbacks_total``;
- ``rtdra_extender_reconcile_releases_total{reason}``;
- ``rtdra_extender_cache_nodes``: ledgers in the worker's cache.

Under gunicorn with several workers each worker counts in its own process;
``rtdra-extender`` then sets ``PROMETHEUS_MULTIPROC_DIR`` so that
prometheus-client aggregates them and any worker can answer ``/metrics``. The
variable must be set before prometheus-client is first imported (it chooses its
value store then).
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

__all__ = ["CONTENT_TYPE", "Metrics"]

#: Latency buckets (seconds) around the scheduler's 5 s extender timeout.
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The extender's metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rtdra_extender_requests", "HTTP requests by verb and status code", ["verb", "code"], registry=r
        )
        self.latency = Histogram(
            "rtdra_extender_request_duration_seconds", "Request latency by verb", ["verb"], buckets=BUCKETS, registry=r
        )
        self.filter_rejections = Counter(
            "rtdra_extender_filter_rejections", "Nodes the filter rejected, by reason class", ["reason"], registry=r
        )
        self.binds = Counter("rtdra_extender_binds", "Bind calls by result", ["result"], registry=r)
        self.bind_conflicts = Counter(
            "rtdra_extender_bind_conflicts", "Compare-and-swap conflicts (HTTP 409) met while reserving", registry=r
        )
        self.bind_rollbacks = Counter(
            "rtdra_extender_bind_rollbacks", "Reservations released because the Binding failed", registry=r
        )
        self.reconcile_releases = Counter(
            "rtdra_extender_reconcile_releases", "Reservations released by the reconciler", ["reason"], registry=r
        )
        self.cache_nodes = Gauge(
            "rtdra_extender_cache_nodes", "Ledgers in the cache", registry=r, multiprocess_mode="max"
        )

    def exposition(self) -> bytes:
        """The text format; aggregated over all workers in multiprocess mode."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
