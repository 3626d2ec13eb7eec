"""The webhook's HTTP face: a Flask app factory, thin views, errors as JSON.

Views translate HTTP to a call into :mod:`webhook.admission` and back; they
hold no policy. Malformed bodies get a 400 with a JSON message (kube-apiserver
never sends them, but nothing a client sends may produce a 500 or a traceback).
TLS is the server's business (:mod:`webhook.cli`, :mod:`webhook.tls`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from webhook.admission import BadReview, Lookups, admit, encode_review, parse_review
from webhook.config import WebhookConfig
from webhook.lookups import cluster_lookups, warm_up
from webhook.metrics import Outcome, WebhookMetrics

log = logging.getLogger(__name__)

#: Pods are bounded by etcd's request limit (1.5 MiB by default); leave room.
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
_EXTENSION = "rtdra.webhook"


class _State:
    def __init__(self, config: WebhookConfig, lookups: Lookups, metrics: WebhookMetrics) -> None:
        self.config = config
        self.lookups = lookups
        self.metrics = metrics


def _state() -> _State:
    state: _State = current_app.extensions[_EXTENSION]
    return state


def create_app(config: WebhookConfig | None = None, lookups: Lookups | None = None) -> Flask:
    """The webhook app; ``config`` defaults to the environment, ``lookups`` to the API server's."""
    config = config if config is not None else WebhookConfig.from_env()
    if lookups is None:
        lookups = cluster_lookups(config)
        warm_up(lookups)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[_EXTENSION] = _State(config, lookups, WebhookMetrics())

    app.add_url_rule("/mutate", view_func=mutate, methods=["POST"])
    app.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    app.add_url_rule("/readyz", view_func=readyz, methods=["GET"])
    app.add_url_rule("/metrics", view_func=metrics, methods=["GET"])
    app.register_error_handler(BadReview, _bad_review)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def _outcome(response: dict[str, Any]) -> Outcome:
    if not response["allowed"]:
        return "denied"
    return "mutated" if "patch" in response else "allowed"


def mutate() -> Response:
    started = time.perf_counter()
    state = _state()
    try:
        review = parse_review(request.get_data(cache=False))
    except BadReview:
        state.metrics.observe("bad_request", time.perf_counter() - started)
        raise
    answer = admit(review, state.config, state.lookups)
    if not answer["allowed"]:
        log.info("denied %s/%s: %s", review.get("namespace"), review.get("name"), answer.get("status", {}))
    state.metrics.observe(_outcome(dict(answer)), time.perf_counter() - started)
    return jsonify(encode_review(answer))


def healthz() -> Response:
    return jsonify(status="ok")


def _certificate_problem(path: str) -> str | None:
    try:
        certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        return f"cannot read the serving certificate {path}: {err}"
    if certificate.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        return f"the serving certificate {path} expired at {certificate.not_valid_after_utc.isoformat()}"
    return None


def readyz() -> tuple[Response, int]:
    """Ready unless the serving certificate is unreadable or expired (then the apiserver cannot call us)."""
    tls_cert = _state().config.tls_cert
    problem = _certificate_problem(tls_cert) if tls_cert else None
    if problem:
        return jsonify(status="not ready", reason=problem), 503
    return jsonify(status="ready"), 200


def metrics() -> Response:
    return Response(_state().metrics.exposition(), mimetype="text/plain; version=0.0.4")


def _bad_review(err: BadReview) -> tuple[Response, int]:
    return jsonify(error=str(err)), 400


def _http_error(err: HTTPException) -> tuple[Response, int]:
    return jsonify(error=err.description or err.name), err.code or 500


def _unexpected(err: Exception) -> tuple[Response, int]:
    log.exception("unexpected error")  # the traceback goes to the log, never to the client
    return jsonify(error="internal error in the RT-DRA webhook; see its log"), 500
