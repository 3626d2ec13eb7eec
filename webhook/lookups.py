"""The webhook's two reads from the cluster: RtClaimParameters and namespace labels.

Both sit behind the plain callables :class:`webhook.admission.Lookups` expects,
so the admission policy never sees a Kubernetes client. An RtClaimParameters
object is read on every admission that names one (it must be current; the
timeout is short and a failure is a clear denial, not a hang). Namespace labels
are cached for a TTL: the ``namespaceSelector`` in the webhook configuration is
the real gate, this is defence in depth and must keep the hot path free of API
calls. The API client is created on first use, so a webhook without API access
still serves ``container.<name>`` requests; :func:`warm_up` makes that first use
happen when a worker starts, not in kube-apiserver's first admission call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from rtdra import names
from rtdra.kube import api_client
from webhook.admission import Lookups, LookupUnavailable
from webhook.config import WebhookConfig

_NOT_FOUND = 404
#: A namespace every cluster has: reading it opens the worker's API connection.
_WARM_UP_NAMESPACE = "default"

log = logging.getLogger(__name__)


class LazyApiClient:
    """One ``ApiClient`` per process, created when first needed (after gunicorn forks)."""

    def __init__(self, kubeconfig: str | None) -> None:
        self._kubeconfig = kubeconfig
        self._client: client.ApiClient | None = None
        self._lock = threading.Lock()

    def get(self) -> client.ApiClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = api_client(self._kubeconfig)
                except Exception as err:  # the config loaders raise many types
                    raise LookupUnavailable(f"no Kubernetes API access ({err})") from None
            return self._client


def _failure(err: Exception) -> LookupUnavailable:
    if isinstance(err, ApiException):
        return LookupUnavailable(f"the API server answered {err.status} {err.reason}")
    return LookupUnavailable(f"the API server did not answer ({type(err).__name__}: {err})")


class ClaimParametersReader:
    """``(namespace, name) -> RtClaimParameters.spec`` or ``None`` if there is no such object."""

    def __init__(self, api: LazyApiClient, timeout_s: float) -> None:
        self._api = api
        self._timeout_s = timeout_s

    def __call__(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        objects = client.CustomObjectsApi(self._api.get())
        try:
            obj = objects.get_namespaced_custom_object(
                names.CLAIM_PARAMETERS_GROUP,
                names.CLAIM_PARAMETERS_VERSION,
                namespace,
                names.CLAIM_PARAMETERS_PLURAL,
                name,
                _request_timeout=self._timeout_s,
            )
        except ApiException as err:
            if err.status == _NOT_FOUND:
                return None
            raise _failure(err) from None
        except (HTTPError, OSError) as err:
            raise _failure(err) from None
        spec = obj.get("spec") if isinstance(obj, dict) else None
        return spec if isinstance(spec, dict) else {}


class NamespaceLabels:
    """``namespace -> labels`` (``None``: no such namespace), cached for ``ttl_s`` seconds."""

    def __init__(
        self,
        api: LazyApiClient,
        timeout_s: float,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Mapping[str, str] | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, namespace: str) -> Mapping[str, str] | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(namespace)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        core = client.CoreV1Api(self._api.get())
        try:
            meta = core.read_namespace(namespace, _request_timeout=self._timeout_s).metadata
            labels: Mapping[str, str] | None = dict((meta.labels if meta is not None else None) or {})
        except ApiException as err:
            if err.status != _NOT_FOUND:
                raise _failure(err) from None
            labels = None
        except (HTTPError, OSError) as err:
            raise _failure(err) from None
        with self._lock:
            self._cache[namespace] = (now, labels)
        return labels


def cluster_lookups(config: WebhookConfig) -> Lookups:
    """The lookups backed by the API server ``config`` points at."""
    api = LazyApiClient(config.kubeconfig)
    return Lookups(
        claim_parameters=ClaimParametersReader(api, config.api_timeout_s),
        namespace_labels=NamespaceLabels(api, config.api_timeout_s, config.namespace_cache_ttl_s),
    )


def warm_up(lookups: Lookups) -> threading.Thread | None:
    """Create the worker's API client and open its connection now, in the background.

    The first admission a worker served used to pay for it: loading the credentials, the TLS
    handshake with the API server and the first read - 1.5 s on an idle node in a pod, and once
    more than kube-apiserver's 5 s webhook timeout on a loaded one, which fails the pod's creation
    (``failurePolicy: Fail``). A failure here only logs: the admission that needs the API says why.
    """
    labels = lookups.namespace_labels
    if labels is None:
        return None

    def run() -> None:
        try:
            labels(_WARM_UP_NAMESPACE)
        except LookupUnavailable as err:
            log.warning("warming up the API connection: %s", err)

    thread = threading.Thread(target=run, name="rtdra-webhook-warm-up", daemon=True)
    thread.start()
    return thread
