"""``rtdra-extender``: run the extender under gunicorn.

Each gunicorn worker builds its own app after the fork (no preloading), so
each has its own API connection, watch-fed ledger cache and reconcile thread;
correctness across workers comes from the compare-and-swap on the API, not
from shared memory. The ``gthread`` worker serves several requests per
process while the watch thread runs beside them.

Flags override ``RTDRA_EXTENDER_*`` environment variables (``extender.config``).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from gunicorn.app.base import BaseApplication

from extender.config import ExtenderConfig
from rtdra.request import PLACEMENTS
from rtdra.settings import ArgumentParser, ConfigError, fail


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="rtdra-extender", description="RT-DRA kube-scheduler extender (gunicorn)")
    p.add_argument("--bind", metavar="HOST:PORT", help="listen address (default 0.0.0.0:8888)")
    p.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--namespace", metavar="NS", help="driver namespace of the NodeAllocationStates (default rt-dra)")
    p.add_argument("--url-prefix", metavar="PATH", help="path prefix of the verbs, e.g. /scheduler (default none)")
    p.add_argument("--default-placement", choices=PLACEMENTS, help="placement of pods that do not say (default pack)")
    p.add_argument("--tls-cert-file", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key-file", metavar="FILE", help="... and this key (PEM)")
    p.add_argument("--client-ca-file", metavar="FILE", help="require client certificates signed by this CA")
    p.add_argument("--workers", type=int, help="gunicorn worker processes (default 1)")
    p.add_argument("--threads", type=int, help="threads per worker (default 32)")
    p.add_argument("--timeout", type=int, help="gunicorn worker timeout in seconds (default 30)")
    p.add_argument("--bind-grace-seconds", type=float, help="release unbound reservations after this long (60)")
    p.add_argument("--reconcile-interval-seconds", type=float, help="reconcile period, 0 disables (default 30)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING ... (default INFO)")
    return p


def gunicorn_options(config: ExtenderConfig) -> dict[str, Any]:
    """gunicorn settings for ``config``."""
    options: dict[str, Any] = {
        "bind": [config.bind],
        "workers": config.workers,
        "worker_class": "gthread",
        "threads": config.threads,
        "timeout": config.timeout,
        "graceful_timeout": 10,
        # kube-scheduler keeps connections open between calls; don't drop them between a filter and its prioritize.
        "keepalive": 30,
        "preload_app": False,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": config.log_level.lower(),
        "control_socket_disable": True,
        "proc_name": "rtdra-extender",
        "child_exit": _child_exit,
    }
    if config.https:
        options["certfile"] = config.tls_cert_file
        options["keyfile"] = config.tls_key_file
    if config.client_ca_file:
        options["ca_certs"] = config.client_ca_file
        options["cert_reqs"] = 2  # ssl.CERT_REQUIRED
    return options


def _child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # noqa: PLC0415 - see _multiprocess_metrics

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class ExtenderServer(BaseApplication):  # type: ignore[misc]
    """gunicorn running ``extender.app.create_app(config)`` in every worker."""

    def __init__(self, config: ExtenderConfig) -> None:
        self.config = config
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.config).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from extender.app import create_app  # noqa: PLC0415 - see _multiprocess_metrics

        logging.basicConfig(
            level=self.config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return create_app(self.config)


def _multiprocess_metrics(config: ExtenderConfig) -> None:
    """Make the workers count in shared files. prometheus-client picks its value store when it is
    first imported, so this runs before anything imports it (hence the late imports above)."""
    if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        path = tempfile.mkdtemp(prefix="rtdra-extender-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        atexit.register(shutil.rmtree, path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = ExtenderConfig.from_env(**{k: v for k, v in vars(args).items() if v is not None})
    except ConfigError as err:
        fail("rtdra-extender", str(err))
    _multiprocess_metrics(config)
    ExtenderServer(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
