"""The extender's HTTP face: a Flask app kube-scheduler calls (``create_app``).

Views only translate: decode the body (``extender.wire``), call the decision
(``extender.decide``) or the binder (``extender.bind``), encode the reply.
Every decision is HTTP 200 - kube-scheduler treats any other status as an
error - and a failed bind is a 200 whose ``Error`` says why. A body that is
not what kube-scheduler sends gets a 400 with a message naming the problem;
no request gets a traceback back.

Routes (the verbs under the configured URL prefix)::

    POST <prefix>/filter      ExtenderArgs -> ExtenderFilterResult
    POST <prefix>/pick        the same, passing only the node the pod's placement ranks first
                              (``filterVerb: pick``: kube-scheduler then skips scoring and prioritize)
    POST <prefix>/prioritize  ExtenderArgs -> HostPriorityList
    POST <prefix>/bind        ExtenderBindingArgs -> ExtenderBindingResult
    POST <prefix>/dra/prioritize  ExtenderArgs -> HostPriorityList (DRA mode, ``dra_scoring``:
                              ``extender.dra``; a separate scheduler extender entry)
    GET  <prefix>/dra/nodes   what that scoring sees: {node: {used, capacity}} (DRA mode)
    GET  /healthz             the process serves
    GET  /readyz              the ledger cache (and the agents' Leases) have synced
    GET  /metrics             Prometheus text format

``create_app(config)`` wires the production parts (API client, watch-fed
cache, the agents' heartbeats, binder, reconciler, requeuer) from the configuration; tests and the benchmark
pass their own ``cache`` (and ``binder``, ``requeuer``) instead and no thread is started.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from flask import Flask, Response, g, request
from kubernetes import client
from werkzeug.exceptions import HTTPException

from extender import wire
from extender.bind import Binder, BindError
from extender.cache import LedgerCache, WatchedLedgerCache
from extender.claims import ClaimParametersCache, ClaimParametersUnavailable
from extender.config import ExtenderConfig
from extender.decide import PodView, filter_nodes, prioritize_nodes
from extender.dra import DraUsage, DraWatch, prioritize_dra
from extender.heartbeats import AgentHeartbeats, WatchedAgentHeartbeats
from extender.metrics import CONTENT_TYPE, Metrics
from extender.pods import PodWatch
from extender.reconcile import Reconciler
from extender.requeue import Requeuer
from rtdra import kube
from rtdra.request import ClaimParametersLookup
from rtdra.store import NasStore

log = logging.getLogger("extender")

JSON: Final = "application/json"
#: The Flask ``app.extensions`` key holding the extender's parts.
EXTENSION: Final = "rtdra-extender"


class NotSynced(RuntimeError):
    """The ledger cache has not completed its first list yet."""


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype=JSON)


def _body() -> Any:
    data = request.get_data(cache=False)
    if not data:
        raise wire.BadRequest("the request has no body (expected JSON)")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:
        raise wire.BadRequest(f"the body is not valid JSON: {err}") from None


class Extender:
    """The parts one app works with (kept in ``app.extensions``)."""

    def __init__(
        self,
        config: ExtenderConfig,
        cache: LedgerCache,
        binder: Binder | None,
        metrics: Metrics,
        reconciler: Reconciler | None = None,
        claim_parameters: ClaimParametersLookup | None = None,
        heartbeats: AgentHeartbeats | None = None,
        requeuer: Requeuer | None = None,
    ) -> None:
        self.config = config
        #: Sends the pods the filter turned away back to kube-scheduler when room appears (``None``: nobody).
        self.requeuer = requeuer
        #: Whose agent is alive (``None``: not checked - tests and the benchmark, or a bound of 0).
        self.heartbeats = heartbeats
        self.cache = cache
        self.binder = binder
        self.metrics = metrics
        self.reconciler = reconciler
        self.claim_parameters = claim_parameters

    def view(self, pod: Any) -> PodView:
        return PodView.of(pod, self.config.default_placement, self.claim_parameters)


@dataclass(frozen=True, slots=True)
class ProductionParts:
    """What ``create_app`` builds when it talks to a real API server."""

    cache: LedgerCache
    binder: Binder
    reconciler: Reconciler | None
    claim_parameters: ClaimParametersCache
    heartbeats: AgentHeartbeats | None
    requeuer: Requeuer


def api_client(config: ExtenderConfig) -> client.ApiClient:
    """The API client, with a connection pool big enough that no thread opens (and drops) its own connection.

    Every request thread may be in a bind at once, beside the ledger, pod and
    RtClaimParameters watches; the client's default pool (5 per CPU) would
    make the rest handshake TLS anew for every call.
    """
    configuration = kube.api_client(config.kubeconfig or None).configuration
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, config.threads + 4)
    return client.ApiClient(configuration)


def _production_parts(config: ExtenderConfig, metrics: Metrics) -> ProductionParts:
    api = api_client(config)
    store = NasStore(api, config.namespace)
    # Room appearing in this process's cache sends the pending RT pods back to kube-scheduler.
    requeuer = Requeuer(api).start()
    cache = WatchedLedgerCache(
        store, watch_timeout_seconds=config.watch_timeout_seconds, on_room=requeuer.signal
    ).start()
    claim_parameters = ClaimParametersCache(api, watch_timeout_seconds=config.watch_timeout_seconds).start()
    heartbeats = None
    if config.agent_lease_seconds > 0:
        heartbeats = WatchedAgentHeartbeats(
            api,
            config.namespace,
            config.agent_lease_seconds,
            watch_timeout_seconds=config.watch_timeout_seconds,
            on_room=requeuer.signal,
        ).start()
    reconciler = None
    pods = None
    if config.reconcile_interval_seconds > 0:
        # One pod watch: the reconciler listens to it, bind looks pending pods up in it.
        pods = PodWatch(api, watch_timeout_seconds=config.watch_timeout_seconds)
        reconciler = Reconciler(
            api,
            store,
            grace_seconds=config.bind_grace_seconds,
            interval_seconds=config.reconcile_interval_seconds,
            metrics=metrics,
            pods=pods,
            on_stored=cache.put,
        ).start()
        pods.start()
    binder = Binder(
        api,
        store,
        cache=cache,
        metrics=metrics,
        default_placement=config.default_placement,
        pods=pods.pending_pod if pods is not None else None,
        claim_parameters=claim_parameters,
    )
    return ProductionParts(cache, binder, reconciler, claim_parameters, heartbeats, requeuer)


def create_app(
    config: ExtenderConfig | None = None,
    *,
    cache: LedgerCache | None = None,
    binder: Binder | None = None,
    metrics: Metrics | None = None,
    claim_parameters: ClaimParametersLookup | None = None,
    heartbeats: AgentHeartbeats | None = None,
    dra_usage: DraUsage | None = None,
    requeuer: Requeuer | None = None,
) -> Flask:
    """The extender app. Without ``cache`` it connects to the API and starts the watches and the reconciler.

    With ``cache`` (tests, the benchmark) nothing is started; ``claim_parameters``
    then resolves ``claim-parameters.<name>`` requests (without it they are invalid), and
    ``dra_usage`` feeds ``<prefix>/dra/prioritize`` (served with ``config.dra_scoring``).
    """
    config = config or ExtenderConfig.from_env()
    metrics = metrics or Metrics()
    reconciler = None
    if cache is None:
        parts = _production_parts(config, metrics)
        cache, binder, reconciler, claim_parameters = (
            parts.cache,
            parts.binder,
            parts.reconciler,
            parts.claim_parameters,
        )
        heartbeats, requeuer = parts.heartbeats, parts.requeuer
    if config.dra_scoring and dra_usage is None:
        dra_usage = DraWatch(api_client(config), watch_timeout_seconds=config.watch_timeout_seconds).start().usage
    ext = Extender(config, cache, binder, metrics, reconciler, claim_parameters, heartbeats, requeuer)

    app = Flask("extender")
    app.extensions[EXTENSION] = ext
    prefix = config.prefix

    def verb(name: str, fn: Callable[[], Response]) -> None:
        app.add_url_rule(f"{prefix}/{name}", endpoint=name, view_func=fn, methods=["POST"])

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.endpoint or "unknown"
        ext.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        started = g.get("started")
        if started is not None:
            ext.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    def require_synced() -> None:
        """Filter and prioritize decide on this process's cache: not before it holds every ledger (each
        gunicorn worker syncs its own, and ``/readyz`` answers from whichever worker takes the probe)."""
        if not ext.cache.synced:
            raise NotSynced("the extender's ledger cache has not synced yet; try again")
        if ext.heartbeats is not None and not ext.heartbeats.synced:
            raise NotSynced("the extender has not listed the agents' Leases yet; try again")

    def filter_(pick: bool = False) -> Response:
        candidates = wire.parse_args(_body())
        require_synced()
        rooms = ext.requeuer.rooms if ext.requeuer is not None else 0  # before any ledger is read
        view = ext.view(candidates.pod)
        verdicts = filter_nodes(view, candidates.names, ext.cache, ext.heartbeats, pick=pick)
        if ext.requeuer is not None and view.request is not None:
            metadata = candidates.pod.get("metadata") or {}
            uid = str(metadata.get("uid") or "")
            if verdicts.passed:
                ext.requeuer.passed(uid)
            else:  # touched again when room appears (kube-scheduler would not try it again for minutes)
                ext.requeuer.turned_away(
                    uid, str(metadata.get("namespace") or ""), str(metadata.get("name") or ""), rooms_before=rooms
                )
        for reason, count in verdicts.reasons.items():
            ext.metrics.filter_rejections.labels(reason).inc(count)
        return _json(wire.filter_result(candidates, verdicts.passed, verdicts.failed, verdicts.unresolvable))

    def prioritize() -> Response:
        candidates = wire.parse_args(_body())
        try:
            require_synced()
        except NotSynced as err:
            # Unsynced, every node would score 0 as if the pod fitted nowhere. kube-scheduler ignores a
            # prioritize that fails (prioritizeNodes: "No score given by this extender") and scores without it.
            return _json({"Error": str(err)}, 503)
        return _json(prioritize_nodes(ext.view(candidates.pod), candidates.names, ext.cache))

    def bind() -> Response:
        args = wire.parse_binding_args(_body())
        try:
            if ext.binder is None:
                raise BindError("this extender has no API access to bind with")
            outcome = ext.binder.bind(args["PodNamespace"], args["PodName"], args["PodUID"], args["Node"])
        except BindError as err:
            ext.metrics.binds.labels("error").inc()
            log.info("bind %s/%s to %s refused: %s", args["PodNamespace"], args["PodName"], args["Node"], err)
            return _json({"Error": wire.reason_text(str(err))})
        ext.metrics.binds.labels("already_bound" if outcome.already_bound else "bound").inc()
        return _json({"Error": ""})

    verb("filter", filter_)
    # filterVerb: pick - the filter, keeping only the node the pod's placement ranks first (see filter_nodes)
    verb("pick", lambda: filter_(pick=True))
    verb("prioritize", prioritize)
    verb("bind", bind)

    if config.dra_scoring and dra_usage is not None:
        usage = dra_usage

        def dra_prioritize() -> Response:
            candidates = wire.parse_args(_body())
            return _json(prioritize_dra(candidates.pod, candidates.names, usage, config.default_placement))

        verb("dra/prioritize", dra_prioritize)

        @app.get(f"{prefix}/dra/nodes")
        def dra_nodes() -> Response:
            """What the scoring sees: per node, RT bandwidth used and capacity (kernel units)."""
            return _json(usage.snapshot())

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/readyz")
    def readyz() -> Response:
        if not ext.cache.synced:
            return Response("ledger cache not synced\n", status=503, mimetype="text/plain")
        if ext.heartbeats is not None and not ext.heartbeats.synced:
            return Response("agent leases not listed\n", status=503, mimetype="text/plain")
        return Response("ok\n", mimetype="text/plain")

    @app.get("/metrics")
    def metrics_() -> Response:
        ext.metrics.cache_nodes.set(len(ext.cache))
        return Response(ext.metrics.exposition(), mimetype=CONTENT_TYPE)

    @app.errorhandler(wire.BadRequest)
    def bad_request(err: wire.BadRequest) -> Response:
        return _json({"Error": f"bad request: {err}"}, 400)

    @app.errorhandler(NotSynced)
    def not_synced(err: NotSynced) -> Response:
        # 200 with Error: the scheduler fails this attempt and retries the pod later.
        return _json({"Error": str(err)})

    @app.errorhandler(ClaimParametersUnavailable)
    def claims_unavailable(err: ClaimParametersUnavailable) -> Response:
        # 200 with Error: the scheduler fails this attempt and retries the pod later.
        return _json({"Error": wire.reason_text(str(err))})

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        return _json({"Error": f"{err.code} {err.name}: {err.description}"}, err.code or 500)

    @app.errorhandler(Exception)
    def internal_error(err: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.path)
        return _json({"Error": f"internal error in the rt-dra extender: {type(err).__name__}"}, 500)

    return app


def extender_of(app: Flask) -> Extender:
    """The parts behind ``app`` (for tests and the gunicorn hooks)."""
    ext: Extender = app.extensions[EXTENSION]
    return ext
