"""``rtdra-webhook``: serve the admission webhook over HTTPS with gunicorn.

How the server listens (address, TLS files, worker processes:
:class:`webhook.config.WebhookServer`) comes from ``RTDRA_WEBHOOK_*`` variables
with the flags on top, as the extender's settings do; what the webhook does is
configured by the other ``RTDRA_WEBHOOK_*`` variables (:class:`WebhookConfig`). ``--kubeconfig`` is only needed
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
from rtdra.settings import ArgumentParser, ConfigError, fail, positive_int
from webhook.config import ENV_PREFIX, WebhookConfig, WebhookServer


def load_app(config: WebhookConfig) -> Any:
    """The app of one worker (imported here, after ``rtdra.serve`` set up multiprocess metrics)."""
    from webhook.app import create_app  # noqa: PLC0415

    return create_app(config)


def parser() -> argparse.ArgumentParser:
    """The flags; each one given wins over its ``RTDRA_WEBHOOK_*`` variable (:class:`WebhookServer`)."""
    p = ArgumentParser(
        prog="rtdra-webhook",
        description="RT-DRA mutating admission webhook (HTTPS, gunicorn). "
        f"Behaviour is configured with {ENV_PREFIX}* environment variables; see docs/webhook.md.",
    )
    p.add_argument("--bind", help="HOST:PORT (default 0.0.0.0:8443)")
    p.add_argument("--tls-cert", dest="tls_cert_file", help="serving certificate (PEM)")
    p.add_argument("--tls-key", dest="tls_key_file", help="its private key (PEM)")
    p.add_argument("--kubeconfig", help="only to read RtClaimParameters")
    p.add_argument("--workers", type=positive_int, help="processes (default 2)")
    p.add_argument("--threads", type=positive_int, help="threads per process (default 4)")
    p.add_argument("--log-level", help="default info")
    p.add_argument("--access-log", action="store_true", default=None, help="log every request to stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = vars(p.parse_args(argv))
    kubeconfig = args.pop("kubeconfig")
    try:
        server = WebhookServer.from_env(**{k: v for k, v in args.items() if v is not None})
        config = WebhookConfig.from_env()
    except ConfigError as err:
        fail("rtdra-webhook", str(err))
    for path in (server.tls_cert_file, server.tls_key_file):
        if not os.access(path, os.R_OK):
            p.error(f"cannot read {path}")
    config = replace(config, kubeconfig=kubeconfig or config.kubeconfig, tls_cert=server.tls_cert_file)

    from webhook.tls import gunicorn_ssl_context  # noqa: PLC0415

    # The ssl_context hook picks up renewed certificates on the next connection, without a restart.
    options = serve.gunicorn_options("rtdra-webhook", server, ssl_context=gunicorn_ssl_context)
    serve.run(options, functools.partial(load_app, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
