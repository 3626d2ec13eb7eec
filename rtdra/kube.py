"""Connecting to the Kubernetes API, the same way in every component, and what its errors mean.

``--kubeconfig FILE`` wins; without it we use the in-cluster service account
when running in a pod, then ``$KUBECONFIG`` / ``~/.kube/config``.
:func:`api_error` is the one mapping of a failed call to an exception, and
:data:`API_FAILURES` is what to catch around a call: the generated client
raises :class:`ApiException` for an answer it did not like, but urllib3's own
errors (``MaxRetryError``, ``ProtocolError``, ``ReadTimeoutError``: neither an
``ApiException`` nor an ``OSError``) when there is no answer at all - as while
kube-apiserver restarts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from typing import Any, Final, Literal

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


class StoreError(RuntimeError):
    """The API refused an operation or could not be reached; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(StoreError):
    """The object does not exist (404); for a ledger: the node has no NodeAllocationState."""


class AlreadyExists(StoreError):
    """An object with that name exists already (409 on create)."""


class TooManyConflicts(StoreError):
    """Every attempt of a compare-and-swap update met a concurrent write."""


class Expired(StoreError):
    """The watch's resourceVersion is too old (HTTP 410); list again."""


#: What a call through the generated client raises when it fails: an API status or a transport failure.
API_FAILURES: Final = (ApiException, HTTPError, OSError)


def api_error(err: ApiException | HTTPError | OSError, what: str) -> StoreError:
    """The one mapping of a failed call to an exception: 404, 409, 410 by name, the rest :class:`StoreError`.

    A transport failure (no answer) is a :class:`StoreError` with status 0.
    """
    message = f"{what}: {failure_text(err)}"
    if not isinstance(err, ApiException):
        return StoreError(message)
    status = int(err.status or 0)
    if status == 404:
        return NotFound(message, status)
    if status == 409:
        return AlreadyExists(message, status)
    if status == 410:
        return Expired(message, status)
    return StoreError(message, status)


def api_call(what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``method(*args, **kwargs)`` (a generated client method); a failure is :func:`api_error`'s naming ``what``."""
    try:
        return method(*args, **kwargs)
    except API_FAILURES as err:
        raise api_error(err, what) from None


def failure_text(err: ApiException | HTTPError | OSError) -> str:
    """What went wrong, in words: ``403 Forbidden``, or that the API server did not answer and why."""
    if isinstance(err, ApiException):
        return f"{int(err.status or 0)} {err.reason}"
    return f"the API server did not answer ({type(err).__name__}: {err})"


def micro_time(now: dt.datetime) -> str:
    """A ``metav1.MicroTime``: RFC 3339 in UTC with microseconds."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_object(call: Callable[..., Any], namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
    """One namespaced object as the API server sent it (JSON, not the generated model), through a generated
    ``read_namespaced_*`` method; ``None`` when it does not exist. Any other failure raises :func:`api_error`'s
    exception.
    """
    try:
        response: Any = call(name, namespace, _preload_content=False, _request_timeout=timeout)
        data = response.data
    except API_FAILURES as err:
        error = api_error(err, f"reading {namespace}/{name} ({call.__name__})")
        if isinstance(error, NotFound):
            return None
        raise error from None
    obj: dict[str, Any] = json.loads(data)
    return obj


def read_pod(core: client.CoreV1Api, namespace: str, name: str, timeout: float) -> dict[str, Any] | None:
    """The pod (:func:`read_object`)."""
    return read_object(core.read_namespaced_pod, namespace, name, timeout)


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client for ``kubeconfig``, else in-cluster, else the default kubeconfig."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
