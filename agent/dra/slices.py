"""Publishing the node's pool: one ResourceSlice per 128 RT CPUs, kept in step with what the agent measured.

:meth:`SlicePublisher.sync` compares the slices in the API (``spec.nodeName`` and ``spec.driver``
field selectors) with the ones :func:`rtdra.dra.resource_slices` builds; when they differ it writes
all of them under the next pool generation (the scheduler only trusts the slices of a pool's
highest generation, so a change is never seen half) and deletes slices the pool no longer has.
Run at start-up and every reconcile interval: kubelet deletes a node's slices of drivers that
are not registered (at its start, and when a plugin goes away), and the agent puts them back.
The Node owns the slices, so they go with it; :meth:`SlicePublisher.delete` removes them on a
clean shutdown.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from kubernetes import client

from rtdra import dra
from rtdra.kube import NotFound, api_call

log = logging.getLogger("rtdra-agent.dra")

GROUP: Final = "resource.k8s.io"
VERSION: Final = "v1"
PLURAL: Final = "resourceslices"
_KIND: Final = (GROUP, VERSION, PLURAL)


class SlicePublisher:
    def __init__(self, api: client.ApiClient, node: str, devices: Callable[[], Sequence[dra.CpuDevice]]) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.node = node
        self.devices = devices
        self.generation = 0
        self.owner: dict[str, Any] | None = None

    def published(self) -> list[dict[str, Any]]:
        found = cast(
            dict[str, Any],
            api_call(
                "listing the node's ResourceSlices",
                self.objects.list_cluster_custom_object,
                *_KIND,
                field_selector=f"spec.nodeName={self.node},spec.driver={dra.DRIVER}",
            ),
        )
        return list(found.get("items") or [])

    def _owner(self) -> dict[str, Any] | None:
        """The Node as owner, read again before each write (a Node created again under the same name has a new uid)."""
        if self.owner is not None:
            return self.owner
        try:
            node = api_call(f"reading Node {self.node}", self.core.read_node, self.node)
        except NotFound:  # no Node object (yet): the slices are deleted by the agent only
            return None
        assert node.metadata is not None
        self.owner = {"name": node.metadata.name, "uid": node.metadata.uid}
        return self.owner

    def sync(self) -> int:
        """Make the API hold this node's pool as it is now; returns the pool's generation."""
        current = self.published()
        generations = [int(s["spec"]["pool"].get("generation", 0)) for s in current]
        top = max(generations, default=0)
        devices = list(self.devices())
        owner = self._owner()
        wanted = dra.resource_slices(self.node, top, devices, owner)
        if current and len(set(generations)) == 1 and dra.same_pool_content(current, wanted):
            self.generation = top
            return top
        generation = top + 1
        self.owner = None
        wanted = dra.resource_slices(self.node, generation, devices, self._owner())
        by_name = {s["metadata"]["name"]: s for s in current}
        for body in wanted:
            name = body["metadata"]["name"]
            old = by_name.pop(name, None)
            if old is None:
                api_call(f"creating ResourceSlice {name}", self.objects.create_cluster_custom_object, *_KIND, body)
            else:
                body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                api_call(
                    f"replacing ResourceSlice {name}", self.objects.replace_cluster_custom_object, *_KIND, name, body
                )
        for name in by_name:
            self._delete(name)
        self.generation = generation
        log.info(
            "ResourceSlice pool %s: generation %d, %d device(s) in %d slice(s)",
            self.node,
            generation,
            len(devices),
            len(wanted),
        )
        return generation

    def delete(self) -> None:
        for s in self.published():
            self._delete(s["metadata"]["name"])
        log.info("ResourceSlice pool %s deleted", self.node)

    def _delete(self, name: str) -> None:
        with contextlib.suppress(NotFound):
            api_call(f"deleting ResourceSlice {name}", self.objects.delete_cluster_custom_object, *_KIND, name)
