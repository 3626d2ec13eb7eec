"""``rtdra-extender``: run the extender under gunicorn (``rtdra.serve``, shared with the webhook).

Each gunicorn worker builds its own app after the fork (no preloading), so
each has its own API connection, watch-fed ledger cache and reconcile thread;
correctness across workers comes from the compare-and-swap on the API, not
from shared memory.

Flags override ``RTDRA_EXTENDER_*`` environment variables (``extender.config``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from typing import Any

from extender.config import ExtenderConfig
from rtdra import serve
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
    p.add_argument(
        "--agent-lease-seconds",
        type=float,
        help="a node whose agent has not renewed its Lease for this long takes no RT pods, 0: do not check (40)",
    )
    p.add_argument(
        "--dra-scoring",
        action="store_true",
        default=None,
        help="serve <prefix>/dra/prioritize for pods with RT ResourceClaims (DRA mode; off by default)",
    )
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING ... (default INFO)")
    p.add_argument("--access-log", action="store_true", default=None, help="log every request to stderr")
    return p


def load_app(config: ExtenderConfig) -> Any:
    """The app of one worker (imported here, after ``rtdra.serve`` set up multiprocess metrics)."""
    from extender.app import create_app  # noqa: PLC0415 - see rtdra.serve

    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(config)  # client certificates: rtdra.serve.run checks them per request


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = ExtenderConfig.from_env(**{k: v for k, v in vars(args).items() if v is not None})
    except ConfigError as err:
        fail("rtdra-extender", str(err))
    serve.run(serve.gunicorn_options("rtdra-extender", config), functools.partial(load_app, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
