"""``rtdra-webhook``: serve the admission webhook over HTTPS with gunicorn.

The command line chooses how the server listens (address, TLS files, worker
processes); what the webhook does is configured by ``RTDRA_WEBHOOK_*``
environment variables (:mod:`webhook.config`). ``--kubeconfig`` is only needed
to read RtClaimParameters (and namespace labels with
``RTDRA_WEBHOOK_VERIFY_NAMESPACE``); in a pod the service account is used.

The ``gthread`` worker keeps the apiserver's connections alive, and the
``ssl_context`` hook (:mod:`webhook.tls`) picks up renewed certificates on the
next connection, without a restart.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from rtdra.settings import ArgumentParser, ConfigError, Env, fail, positive_int
from webhook.config import ENV_PREFIX, WebhookConfig


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any], config: WebhookConfig) -> None:
        self._options = options
        self._config = config
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported here, in the worker: prometheus_client must see PROMETHEUS_MULTIPROC_DIR first.
        from webhook.app import create_app  # noqa: PLC0415

        return create_app(self._config)


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def parser() -> argparse.ArgumentParser:
    """The flags, each defaulting to its ``RTDRA_WEBHOOK_*`` variable (raises ``ConfigError`` on a bad one)."""
    env = Env(ENV_PREFIX)
    p = ArgumentParser(
        prog="rtdra-webhook",
        description="RT-DRA mutating admission webhook (HTTPS, gunicorn). "
        f"Behaviour is configured with {ENV_PREFIX}* environment variables; see docs/webhook.md.",
    )
    p.add_argument("--bind", default=env.text("BIND", "0.0.0.0:8443"), help="HOST:PORT (default %(default)s)")
    p.add_argument("--tls-cert", default=env.text("TLS_CERT"), help="serving certificate (PEM)")
    p.add_argument("--tls-key", default=env.text("TLS_KEY"), help="its private key (PEM)")
    p.add_argument("--kubeconfig", default=env.text("KUBECONFIG"), help="only to read RtClaimParameters")
    p.add_argument("--workers", type=positive_int, default=env.integer("WORKERS", 2, minimum=1), help="processes")
    p.add_argument(
        "--threads", type=positive_int, default=env.integer("THREADS", 4, minimum=1), help="threads per process"
    )
    p.add_argument("--log-level", default=env.text("LOG_LEVEL", "info"))
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        p = parser()
        config = WebhookConfig.from_env()
    except ConfigError as err:
        fail("rtdra-webhook", str(err))
    args = p.parse_args(argv)
    if not args.tls_cert or not args.tls_key:
        p.error("--tls-cert and --tls-key are required: kube-apiserver only calls webhooks over HTTPS")
    for path in (args.tls_cert, args.tls_key):
        if not os.access(path, os.R_OK):
            p.error(f"cannot read {path}")
    config = replace(config, kubeconfig=args.kubeconfig or config.kubeconfig, tls_cert=args.tls_cert)

    from webhook.tls import gunicorn_ssl_context  # noqa: PLC0415

    options: dict[str, Any] = {
        "bind": [args.bind],
        "workers": args.workers,
        "worker_class": "gthread",
        "threads": args.threads,
        "certfile": args.tls_cert,
        "keyfile": args.tls_key,
        "ssl_context": gunicorn_ssl_context,
        "keepalive": 30,  # kube-apiserver reuses connections; don't make it re-handshake
        "timeout": 30,
        "graceful_timeout": 10,
        "loglevel": args.log_level,
        "errorlog": "-",
        "accesslog": "-" if args.access_log else None,
        "control_socket_disable": True,
        "proc_name": "rtdra-webhook",
    }
    multiproc_dir = None
    given_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given_dir:
        # Values of a previous run (a restarted container keeps its emptyDir) would be summed in.
        Path(given_dir).mkdir(parents=True, exist_ok=True)
        for stale in Path(given_dir).glob("*.db"):
            stale.unlink(missing_ok=True)
    elif args.workers > 1:
        multiproc_dir = tempfile.mkdtemp(prefix="rtdra-webhook-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        options["child_exit"] = _child_exit
    try:
        _Server(options, config).run()
    finally:
        if multiproc_dir:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
