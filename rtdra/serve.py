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

CERT_OPTIONAL = 1  # ssl.CERT_OPTIONAL, without importing ssl here
#: Served without a client certificate when client certificates are checked: kubelet's probes present none.
PROBE_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})


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
        # Optional at the handshake - a certificate that is presented must be signed by the CA - and
        # required by require_client_certificate(), which run() wraps around the app, on every path
        # but the probes'.
        options["ca_certs"] = listen.client_ca_file
        options["cert_reqs"] = CERT_OPTIONAL
    if ssl_context is not None:
        options["ssl_context"] = ssl_context
    return options


def require_client_certificate(app: Any, exempt: frozenset[str] = PROBE_PATHS) -> Any:
    """WSGI middleware: 403 for a request without a verified client certificate, except on ``exempt`` paths.

    With ``client_ca_file`` the TLS handshake accepts clients without a certificate (and refuses one the
    CA did not sign), so that kubelet's HTTPS probes, which present none, reach /healthz and /readyz;
    every other path - the scheduler's verbs, /metrics - needs the certificate, checked here.
    """

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "") not in exempt:
            sock = environ.get("gunicorn.socket")
            getpeercert = getattr(sock, "getpeercert", None)
            if getpeercert is None or not getpeercert():
                start_response("403 Forbidden", [("Content-Type", "text/plain")])
                return [b"a client certificate signed by the client CA is required\n"]
        return app(environ, start_response)

    return wrapped


def _with_client_certificates(load: Callable[[], Any]) -> Callable[[], Any]:
    def checked() -> Any:
        return require_client_certificate(load())

    return checked


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
    if settings.get("ca_certs"):  # the handshake lets clients without a certificate in: the app must not
        load = _with_client_certificates(load)
    try:
        _Server(settings, load).run()
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
