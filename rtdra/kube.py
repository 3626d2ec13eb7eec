"""Connecting to the Kubernetes API, the same way in every component, and what its errors mean.

``--kubeconfig FILE`` wins; without it we use the in-cluster service account
when running in a pod, then ``$KUBECONFIG`` / ``~/.kube/config``.
:func:`api_error` is the one mapping of an API status to an exception.
"""

from __future__ import annotations

import os
from typing import Literal

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]


class StoreError(RuntimeError):
    """The API refused an operation; ``status`` is the HTTP status (0 if none)."""

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


def api_error(err: ApiException, what: str) -> StoreError:
    """The one mapping of an API status to an exception: 404, 409, 410 by name, the rest :class:`StoreError`."""
    status = int(err.status or 0)
    message = f"{what}: {status} {err.reason}"
    if status == 404:
        return NotFound(message, status)
    if status == 409:
        return AlreadyExists(message, status)
    if status == 410:
        return Expired(message, status)
    return StoreError(message, status)


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client for ``kubeconfig``, else in-cluster, else the default kubeconfig."""
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)
