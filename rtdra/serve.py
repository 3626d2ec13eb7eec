"""Serving a Flask app under gunicorn, written once for the extender and the webhook (and their benchmarks).

Both services run the ``gthread`` worker (several requests per process, a
watch thread beside them), keep connections alive between their callers'
requests (kube-scheduler and kube-apiserver reuse them; a dropped one costs a
TLS handshake), build their app in each worker after the fork (no preloading:
each worker has its own API connections and caches), log errors to stderr
and have no control socket.

Metrics across workers: prometheus-client chooses its value store when it is
first imported, so :func:`run` sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh
directory, removed at exit, when more than one worker runs and none is given;
a given one is emptied of a previous run's files) *before* the app is loaded,
and marks each exited worker dead. Callers therefore import their app - and
with it prometheus-client - only inside ``load``.

This is the core's one module that knows gunicorn (an exception the
import-linter contract names); the services pass it their options and app.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from rtdra.settings import Listen

CERT_REQUIRED = 2  # ssl.CERT_REQUIRED, without importing ssl here


def gunicorn_options(name: str, listen: Listen, *, ssl_context: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The settings both services run with; TLS with a certificate, client certificates with a client CA."""
    options: dict[str, Any] = {
        "bind": [listen.bind],
        "workers": listen.workers,
        "worker_class": "gthread",
        "threads": listen.threads,
        "timeout": listen.timeout,
        "graceful_timeout": 10,
        "keepalive": 30,
        "preload_app": False,
        "accesslog": "-" if listen.access_log else None,
        "errorlog": "-",
        "loglevel": listen.log_level.lower(),
        "control_socket_disable": True,
        "proc_name": name,
    }
    if listen.tls_cert_file:
        options["certfile"] = listen.tls_cert_file
        options["keyfile"] = listen.tls_key_file
    if listen.client_ca_file:
        options["ca_certs"] = listen.client_ca_file
        options["cert_reqs"] = CERT_REQUIRED
    if ssl_context is not None:
        options["ssl_context"] = ssl_context
    return options


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: Mapping[str, Any], load: Callable[[], Any]) -> None:
        self._options = options
        self._load = load
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self._load()


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess  # noqa: PLC0415 - imported after PROMETHEUS_MULTIPROC_DIR is set

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def run(options: Mapping[str, Any], load: Callable[[], Any]) -> None:
    """Serve ``load()`` (called in each worker) with ``options`` until gunicorn stops."""
    made = None
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        # Values of a previous run (a restarted container keeps its emptyDir) would be summed in.
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
    elif int(options.get("workers", 1)) > 1:
        made = tempfile.mkdtemp(prefix=f"{options.get('proc_name', 'rtdra')}-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    settings = dict(options)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        settings["child_exit"] = _child_exit
    try:
        _Server(settings, load).run()
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
