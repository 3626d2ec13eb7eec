"""RtClaimParameters for pods that name them and bypassed the webhook.

The seed driver's request form, ``rt.resource.example.com/claim-parameters.<container>:
<object name>``, names an ``RtClaimParameters`` object in the pod's namespace.
The webhook resolves it at admission into the canonical spec annotation, so
the extender only meets it on pods that bypassed the webhook (a namespace
without the opt-in label, the webhook down with ``failurePolicy: Ignore``).
For those, filter, prioritize and bind resolve the name here.

:class:`ClaimParametersCache` is the ``rtdra.request.ClaimParametersLookup``
the extender passes to ``read_pod_request``: a list-then-watch
(``rtdra.listwatch``) of every ``RtClaimParameters`` in the cluster (few, small objects), so the filter's hot
path makes no API call; a name the cache does not hold (not synced yet, or
created a moment ago and not yet seen on the watch) is read directly, and a
read that fails raises :class:`ClaimParametersUnavailable` - the scheduler
gets an error and retries, rather than a pod declared unresolvable because the
API hiccupped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from kubernetes import client

from rtdra import names
from rtdra.kube import API_FAILURES, NotFound, api_error
from rtdra.listwatch import ObjectEvent, object_feed

Key = tuple[str, str]
_ARGS: Final = (names.CLAIM_PARAMETERS_GROUP, names.CLAIM_PARAMETERS_VERSION, names.CLAIM_PARAMETERS_PLURAL)


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
        self._specs: dict[Key, dict[str, Any]] = {}
        self.feed = object_feed(
            "claim-parameters-watch",
            self._objects.list_cluster_custom_object,
            *_ARGS,
            on_list=self._replace_all,
            on_event=self._apply,
            request_timeout=request_timeout,
            timeout_seconds=watch_timeout_seconds,
            retry_seconds=retry_seconds,
        )

    @property
    def synced(self) -> bool:
        return self.feed.synced.is_set()

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
        except API_FAILURES as err:
            error = api_error(err, f"cannot read RtClaimParameters {namespace}/{name}")
            if isinstance(error, NotFound):
                return None
            raise ClaimParametersUnavailable(str(error)) from None
        return _spec(obj if isinstance(obj, Mapping) else {})  # the watch will bring it into the cache

    # -- the feed ------------------------------------------------------------------

    def start(self) -> ClaimParametersCache:
        self.feed.start()
        return self

    def stop(self) -> None:
        self.feed.stop()

    def _replace_all(self, items: Sequence[Mapping[str, Any]]) -> None:
        self._specs = {_key(obj): _spec(obj) for obj in items}

    def _apply(self, event: ObjectEvent) -> None:
        if event.type == "DELETED":
            self._specs.pop(_key(event.object), None)
        else:
            self._specs[_key(event.object)] = _spec(event.object)
