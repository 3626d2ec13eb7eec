"""``rtdra-webhook``: serve the admission webhook over HTTPS with gunicorn.

The command line chooses how the server listens (address, TLS files, worker
processes); what the webhook does is configured by ``RTDRA_WEBHOOK_*``
environment variables (:mod:`webhook.config`). ``--kubeconfig`` is only needed
to read RtClaimParameters (and namespace labels with
``RTDRA_WEBHOOK_VERIFY_NAMESPACE``); in a pod the service account is used.

gunicorn runs as for the extender (``rtdra.serve``); the ``ssl_context`` hook
(:mod:`webhook.tls`) picks up renewed certificates on the next connection,
without a restart.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rtdra import serve
from rtdra.settings import ArgumentParser, ConfigError, Env, fail, positive_int
from webhook.config import ENV_PREFIX, WebhookConfig


def load_app(config: WebhookConfig) -> Any:
    """The app of one worker (imported here, after ``rtdra.serve`` set up multiprocess metrics)."""
    from webhook.app import create_app  # noqa: PLC0415

    return create_app(config)


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

    options = serve.gunicorn_options(
        name="rtdra-webhook",
        bind=args.bind,
        workers=args.workers,
        threads=args.threads,
        log_level=args.log_level,
        access_log=args.access_log,
        certfile=args.tls_cert,
        keyfile=args.tls_key,
        # Picks up renewed certificates on the next connection, without a restart.
        ssl_context=gunicorn_ssl_context,
    )
    serve.run(options, functools.partial(load_app, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
