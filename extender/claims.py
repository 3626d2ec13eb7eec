"""RtClaimParameters for pods that name them and bypassed the webhook.

The seed driver's request form, ``rt.resource.example.com/claim-parameters.<container>:
<object name>``, names an ``RtClaimParameters`` object in the pod's namespace.
The webhook resolves it at admission into the canonical spec annotation, so
the extender only meets it on pods that bypassed the webhook (a namespace
without the opt-in label, the webhook down with ``failurePolicy: Ignore``).
For those, filter, prioritize and bind resolve the name here.

:class:`ClaimParametersCache` is the ``rtdra.request.ClaimParametersLookup``
the extender passes to ``read_pod_request``: a list-then-watch of every
``RtClaimParameters`` in the cluster (few, small objects), so the filter's hot
path makes no API call; a name the cache does not hold (not synced yet, or
created a moment ago and not yet seen on the watch) is read directly, and a
read that fails raises :class:`ClaimParametersUnavailable` - the scheduler
gets an error and retries, rather than a pod declared unresolvable because the
API hiccupped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, cast

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from rtdra import names

log = logging.getLogger(__name__)

Key = tuple[str, str]


class ClaimParametersUnavailable(RuntimeError):
    """The API could not be asked for an RtClaimParameters object just now."""


def _spec(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec")
    return dict(spec) if isinstance(spec, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


class ClaimParametersCache:
    """``(namespace, name) -> RtClaimParameters.spec`` (``None``: no such object), watch-fed."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        request_timeout: float = 5.0,
        watch_timeout_seconds: int = 300,
        retry_seconds: float = 5.0,
    ) -> None:
        self._objects = client.CustomObjectsApi(api)
        self.request_timeout = request_timeout
        self.watch_timeout_seconds = watch_timeout_seconds
        self.retry_seconds = retry_seconds
        self._specs: dict[Key, dict[str, Any]] = {}
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def __call__(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        spec = self._specs.get((namespace, name))
        if spec is not None:
            return spec
        return self._read(namespace, name)

    def _read(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            obj = self._objects.get_namespaced_custom_object(
                names.CLAIM_PARAMETERS_GROUP,
                names.CLAIM_PARAMETERS_VERSION,
                namespace,
                names.CLAIM_PARAMETERS_PLURAL,
                name,
                _request_timeout=self.request_timeout,
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise ClaimParametersUnavailable(
                f"cannot read RtClaimParameters {namespace}/{name}: {err.status} {err.reason}"
            ) from None
        except (HTTPError, OSError) as err:
            raise ClaimParametersUnavailable(f"cannot read RtClaimParameters {namespace}/{name}: {err}") from None
        return _spec(obj if isinstance(obj, Mapping) else {})  # the watch will bring it into the cache

    # -- the feed ------------------------------------------------------------------

    def start(self) -> ClaimParametersCache:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="claim-parameters-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _args(self) -> tuple[str, str, str]:
        return names.CLAIM_PARAMETERS_GROUP, names.CLAIM_PARAMETERS_VERSION, names.CLAIM_PARAMETERS_PLURAL

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listed = cast(
                    dict[str, Any],
                    self._objects.list_cluster_custom_object(*self._args(), _request_timeout=self.request_timeout),
                )
                self._specs = {_key(obj): _spec(obj) for obj in listed.get("items") or []}
                self._synced.set()
                self._follow(str((listed.get("metadata") or {}).get("resourceVersion") or ""))
            except ApiException as err:
                if err.status != 410:  # 410: too old, list again at once
                    log.warning("RtClaimParameters cache: %s %s; retrying in %.0fs", err.status, err.reason,
                                self.retry_seconds)  # fmt: skip
                    self._stop.wait(self.retry_seconds)
            except Exception:  # a feed thread must not die silently
                log.exception("RtClaimParameters cache: unexpected error; retrying in %.0fs", self.retry_seconds)
                self._stop.wait(self.retry_seconds)

    def _follow(self, version: str) -> None:
        while not self._stop.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self._objects.list_cluster_custom_object,
                    *self._args(),
                    resource_version=version,
                    timeout_seconds=self.watch_timeout_seconds,
                    allow_watch_bookmarks=True,
                    _request_timeout=self.watch_timeout_seconds + self.request_timeout,
                ):
                    if self._stop.is_set():
                        return
                    obj: Mapping[str, Any] = event.get("raw_object") or event.get("object") or {}
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    kind = event.get("type")
                    if kind == "DELETED":
                        self._specs.pop(_key(obj), None)
                    elif kind in ("ADDED", "MODIFIED"):
                        self._specs[_key(obj)] = _spec(obj)
            finally:
                stream.stop()  # type: ignore[no-untyped-call]
