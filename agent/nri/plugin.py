"""RT-DRA's NRI plugin: what the agent does when the runtime tells it of a container.

Every decision is the :class:`agent.enforce.Enforcer`'s - the same calls the CDI hook path
makes - so both paths leave the same kernel state for the same pod. This module only
translates NRI's messages into those calls:

- **CreateContainer**: an RT container (its pod's ``rt.resource.example.com/allocation``
  annotation names it, or the webhook's ``.../spec`` does) gets the ``RT_*`` environment the
  webhook normally gives it, for whatever of it is missing (a pod that bypassed the webhook).
  Nothing else is adjusted: in particular not the cpuset - in partitioned mode the backend
  moves only the reserved tasks into their partitions, as on the hook path - and not NRI's
  ``linux.scheduler`` (see below).
- **StartContainer**: containerd (2.x) sends it after the task is created and before it is
  started: the container's first process exists (its pid is in the message) but has not run
  its program yet - the moment the CDI ``createRuntime`` hook runs at. The reservation is
  applied then; a refusal fails the start (fail closed) unless the agent runs ``--fail-open``.
- **PostStartContainer**: applied again (a no-op when StartContainer did it) for runtimes
  that do not send the pid earlier.
- **StopContainer**, **RemoveContainer**: released; **RemovePodSandbox**: the pod's all released.
- **Synchronize** (each connection, so after a restart of the agent or of the runtime):
  :meth:`Enforcer.sync` with the runtime's running containers.

Why not ``linux.scheduler`` (OCI ``process.scheduler``, which runc applies before exec): measured
(``bench/bench_nri_start.py``), it slows the start of a container with a small reservation
(1.66x a plain start, against 1.08x for StartContainer, at 1% of a CPU) because runc's own
set-up then runs on the container's budget; at StartContainer the reservation already comes
before the program's first instruction, so it would close no window; and it would take the
decision away from the Enforcer - a kernel refusal (EBUSY, or EPERM for a cpuset narrower than the root domain)
would become runc's opaque start failure with no Event, no record and no fail-open, and the
backend's affinity rule (a deadline task's affinity must span its root domain, widened and
given back) and partitions could not be applied.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from agent import oci
from agent._generated.nri import api_pb2
from agent.enforce import Enforcer
from agent.nri.ttrpc import RpcError
from agent.nri.wire import Code
from rtdra import names
from rtdra.ledger import Slot

log = logging.getLogger(__name__)

EVENTS: Final = (
    api_pb2.CREATE_CONTAINER,
    api_pb2.START_CONTAINER,
    api_pb2.POST_START_CONTAINER,
    api_pb2.STOP_CONTAINER,
    api_pb2.REMOVE_CONTAINER,
    api_pb2.REMOVE_POD_SANDBOX,
)


@dataclass(frozen=True, slots=True)
class Granted:
    """One container's slots as its pod's allocation annotation states them (the NAS stays the authority)."""

    slots: tuple[Slot, ...]

    def env(self) -> dict[str, str]:
        """The environment the webhook gives an RT container."""
        s = self.slots[0]
        return names.container_env(s.runtime_ns, s.deadline_ns, s.period_ns, len(self.slots))


def granted(annotations: Mapping[str, str]) -> dict[str, Granted]:
    """The containers the pod's allocation annotation names (``{}`` for none or a malformed one).

    The annotation is :func:`rtdra.ledger.allocation_annotation`'s: per container its CPUs and, once,
    the slots' timing in :meth:`Slot.timing_json`'s keys - read back by :meth:`Slot.from_json`.
    """
    raw = annotations.get(names.ALLOCATION)
    if not raw:
        return {}
    try:
        containers = json.loads(raw)["containers"]
        found = {
            str(name): Granted(tuple(Slot.from_json(value, cpu=int(cpu)) for cpu in value["cpus"]))
            for name, value in containers.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("NRI: ignoring a malformed %s annotation: %s", names.ALLOCATION, err)
        return {}
    return {name: g for name, g in found.items() if g.slots}


def requested(annotations: Mapping[str, str]) -> frozenset[str]:
    """The containers the webhook's spec annotation names."""
    raw = annotations.get(names.SPEC)
    if not raw:
        return frozenset()
    try:
        spec = json.loads(raw)
        return frozenset(str(name) for name in spec) if isinstance(spec, dict) else frozenset()
    except ValueError:
        return frozenset()


def is_rt(pod: api_pb2.PodSandbox, container: api_pb2.Container) -> bool:
    return container.name in granted(pod.annotations) or container.name in requested(pod.annotations)


def container_ref(pod: api_pb2.PodSandbox, container: api_pb2.Container) -> oci.ContainerRef:
    """The container as the Enforcer knows it (what :func:`agent.oci.container_ref` reads from a hook's state)."""
    return oci.ContainerRef(
        pod_uid=pod.uid,
        namespace=pod.namespace,
        pod_name=pod.name,
        container=container.name,
        container_id=container.id,
        pid=container.pid,
    )


class RtPlugin:
    """The handlers :class:`agent.nri.stub.Stub` calls."""

    events: Sequence[int] = EVENTS

    def __init__(self, enforcer: Enforcer) -> None:
        self.enforcer = enforcer

    def configure(self, request: api_pb2.ConfigureRequest) -> None:
        pass

    def synchronize(
        self, pods: Sequence[api_pb2.PodSandbox], containers: Sequence[api_pb2.Container]
    ) -> list[api_pb2.ContainerUpdate]:
        by_id = {pod.id: pod for pod in pods}
        running = [c for c in containers if c.state == api_pb2.CONTAINER_RUNNING and c.pid > 0]
        refs = [
            container_ref(by_id[c.pod_sandbox_id], c)
            for c in running
            if c.pod_sandbox_id in by_id and is_rt(by_id[c.pod_sandbox_id], c)
        ]
        for outcome in self.enforcer.sync(refs, {c.id for c in running}):
            if outcome.ok:
                log.info("NRI synchronize: %s", outcome.message)
        return []

    def create_container(self, request: api_pb2.CreateContainerRequest) -> api_pb2.CreateContainerResponse:
        reply = api_pb2.CreateContainerResponse()
        mine = granted(request.pod.annotations).get(request.container.name)
        if mine is None:
            return reply
        present = {entry.partition("=")[0] for entry in request.container.env}
        for key, value in mine.env().items():
            if key not in present:
                reply.adjust.env.append(api_pb2.KeyValue(key=key, value=value))
        return reply

    def _prepare(self, pod: api_pb2.PodSandbox, container: api_pb2.Container, *, fail: bool) -> None:
        if container.pid <= 0 or not is_rt(pod, container):
            return
        outcome = self.enforcer.prepare(container_ref(pod, container))
        if outcome.ok:
            log.debug("NRI: %s", outcome.message)
        elif fail:
            raise RpcError(Code.UNKNOWN, f"rtdra-agent: {outcome.message}")

    def start_container(self, request: api_pb2.StartContainerRequest) -> None:
        self._prepare(request.pod, request.container, fail=True)

    def post_start_container(self, request: api_pb2.PostStartContainerRequest) -> None:
        self._prepare(request.pod, request.container, fail=False)  # the runtime only logs a failure here

    def stop_container(self, request: api_pb2.StopContainerRequest) -> None:
        self.enforcer.release_container(request.pod.uid, request.container.name, request.container.id)

    def remove_container(self, request: api_pb2.RemoveContainerRequest) -> None:
        self.enforcer.release_container(request.pod.uid, request.container.name, request.container.id)

    def remove_pod_sandbox(self, request: api_pb2.RemovePodSandboxRequest) -> None:
        self.enforcer.release_pod(request.pod.uid)

    def shutdown(self) -> None:
        log.info("NRI: the runtime is shutting down")
