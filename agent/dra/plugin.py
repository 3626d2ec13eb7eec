"""The kubelet DRA plugin: ``v1.DRAPlugin`` and ``v1beta1.DRAPlugin``, registered through the plugin registry.

Follows ``k8s.io/kubelet`` v0.37 (``pkg/apis/dra/v1``, ``pkg/apis/dra/v1beta1``,
``pkg/apis/pluginregistration/v1``):

- the service socket (default ``/var/lib/kubelet/plugins/<driver>/dra.sock``) serves both
  API versions; each call is translated to :class:`agent.dra.prepare.Preparer` and back;
- the registration socket (default ``/var/lib/kubelet/plugins_registry/<driver>-reg.sock``)
  serves ``pluginregistration.Registration``: kubelet's plugin watcher finds the socket, asks
  ``GetInfo`` (type ``DRAPlugin``, the driver's name, the service socket, the versions) and
  reports back with ``NotifyRegistrationStatus``.

A thread re-serves a socket whose file went away (someone cleaned the directory), which kubelet's
watcher sees as a new plugin. Errors are per claim (the ``error`` field kubelet puts in the pod's
events), never a failed RPC: one bad claim must not fail the others of the same call.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Protocol

import grpc

from agent import grpcserver
from agent._generated.dra.v1 import api_pb2 as v1
from agent._generated.dra.v1 import api_pb2_grpc as v1_grpc
from agent._generated.dra.v1beta1 import api_pb2 as v1beta1
from agent._generated.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from agent._generated.pluginregistration.v1 import api_pb2 as reg
from agent._generated.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from agent.dra.prepare import PreparedDevice, Preparer
from agent.kubelet import KUBELET_ROOT
from rtdra import dra

log = logging.getLogger("rtdra-agent.dra")

#: ``pluginregistration/v1`` ``DRAPlugin``: the plugin type kubelet's DRA handler takes.
PLUGIN_TYPE: Final = "DRAPlugin"
#: The services kubelet may call, newest first (kubelet picks the first it knows).
SUPPORTED_VERSIONS: Final = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
POLL_S: Final = 1.0
#: The longest path a unix socket can have (``sun_path`` is 108 bytes with its NUL), here and in kubelet.
MAX_SOCKET_PATH: Final = 107


def registry_socket(kubelet_root: Path, driver: str = dra.DRIVER) -> Path:
    return kubelet_root / "plugins_registry" / f"{driver}-reg.sock"


def service_socket(kubelet_root: Path, driver: str = dra.DRIVER) -> Path:
    return kubelet_root / "plugins" / driver / "dra.sock"


class _Claim(Protocol):
    """``Claim`` of either API version."""

    namespace: str
    uid: str
    name: str


class DraService(v1_grpc.DRAPluginServicer, v1beta1_grpc.DRAPluginServicer):
    """``DRAPlugin`` of one API version: v1 and v1beta1 have the same messages but for ``share_id`` (v1 only).

    ``pb`` is the version's generated message module; the answers are its messages. gRPC looks the
    RPCs up by name, so one class serves both versions (``add_DRAPluginServicer_to_server`` of each).
    """

    def __init__(self, preparer: Preparer, pb: ModuleType) -> None:
        self.preparer = preparer
        self.pb = pb

    def NodePrepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - the RPC's name
        return self.pb.NodePrepareResourcesResponse(claims=self.prepare(request.claims))

    def NodeUnprepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self.pb.NodeUnprepareResourcesResponse(claims=self.unprepare(request.claims))

    def prepare(self, claims: Iterable[_Claim]) -> dict[str, Any]:
        pb = self.pb
        out: dict[str, Any] = {}
        for claim in claims:
            try:
                devices = self.preparer.prepare(claim.namespace, claim.uid, claim.name)
            except dra.ClaimError as err:
                log.warning("prepare %s/%s: %s", claim.namespace, claim.name, err)
                out[claim.uid] = pb.NodePrepareResourceResponse(error=str(err))
                continue
            except Exception as err:
                log.exception("prepare %s/%s failed", claim.namespace, claim.name)
                out[claim.uid] = pb.NodePrepareResourceResponse(error=f"rtdra-agent: {err}")
                continue
            out[claim.uid] = pb.NodePrepareResourceResponse(devices=[_device(pb, d) for d in devices])
        return out

    def unprepare(self, claims: Iterable[_Claim]) -> dict[str, Any]:
        pb = self.pb
        out: dict[str, Any] = {}
        for claim in claims:
            try:
                self.preparer.unprepare(claim.namespace, claim.uid, claim.name)
                out[claim.uid] = pb.NodeUnprepareResourceResponse()
            except Exception as err:
                log.exception("unprepare %s/%s failed", claim.namespace, claim.name)
                out[claim.uid] = pb.NodeUnprepareResourceResponse(error=f"rtdra-agent: {err}")
        return out


def _device(pb: ModuleType, d: PreparedDevice) -> Any:
    fields: dict[str, object] = {
        "request_names": list(d.request_names),
        "pool_name": d.pool_name,
        "device_name": d.device_name,
        "cdi_device_ids": list(d.cdi_device_ids),
    }
    if d.share_id and pb is v1:
        fields["share_id"] = d.share_id
    return pb.Device(**fields)


class Registration(reg_grpc.RegistrationServicer):
    def __init__(self, driver: str, endpoint: Path) -> None:
        self.driver = driver
        self.endpoint = endpoint
        #: Set once kubelet reports the plugin registered; ``error`` holds a refusal's reason.
        self.registered = threading.Event()
        self.error = ""

    def GetInfo(self, request: reg.InfoRequest, context: grpc.ServicerContext) -> reg.PluginInfo:  # noqa: N802
        return reg.PluginInfo(
            type=PLUGIN_TYPE,
            name=self.driver,
            endpoint=str(self.endpoint),
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    def NotifyRegistrationStatus(  # noqa: N802
        self, request: reg.RegistrationStatus, context: grpc.ServicerContext
    ) -> reg.RegistrationStatusResponse:
        if request.plugin_registered:
            self.error = ""
            self.registered.set()
            log.info("kubelet registered the DRA plugin %s (%s)", self.driver, self.endpoint)
        else:
            self.error = request.error
            self.registered.clear()
            log.error("kubelet refused the DRA plugin %s: %s", self.driver, request.error)
        return reg.RegistrationStatusResponse()


class DraPlugin:
    """Serves the plugin on its two sockets until :meth:`stop` (which removes them: kubelet unregisters it)."""

    def __init__(
        self, preparer: Preparer, *, kubelet_root: Path = KUBELET_ROOT, driver: str = dra.DRIVER, poll_s: float = POLL_S
    ) -> None:
        self.registry_socket = registry_socket(kubelet_root, driver)
        self.service_socket = service_socket(kubelet_root, driver)
        self.registration = Registration(driver, self.service_socket)
        self.poll_s = poll_s

        def add_services(server: grpc.Server) -> None:
            v1_grpc.add_DRAPluginServicer_to_server(DraService(preparer, v1), server)
            v1beta1_grpc.add_DRAPluginServicer_to_server(DraService(preparer, v1beta1), server)

        self._service = grpcserver.UnixServer(self.service_socket, add_services)
        self._registry = grpcserver.UnixServer(
            self.registry_socket, lambda s: reg_grpc.add_RegistrationServicer_to_server(self.registration, s)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def registered(self) -> threading.Event:
        return self.registration.registered

    def start(self) -> None:
        """Serve the service, then the registration socket (kubelet dials the service once it finds that one)."""
        for path in (self.service_socket, self.registry_socket):
            if len(os.fsencode(path.absolute())) > MAX_SOCKET_PATH:
                raise OSError(
                    f"{path}: a unix socket's path has at most {MAX_SOCKET_PATH} bytes; "
                    "give kubelet (and --kubelet-root-dir) a shorter --root-dir"
                )
        self.service_socket.parent.mkdir(parents=True, exist_ok=True)
        self.registry_socket.parent.mkdir(parents=True, exist_ok=True)
        self._service.start()
        self._registry.start()
        log.info("DRA plugin serving %s, registering through %s", self.service_socket, self.registry_socket)
        self._thread = threading.Thread(target=self._watch, name="dra-plugin", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            for server in (self._service, self._registry):
                if not server.serving():
                    log.info("%s went away: serving it again", server.path)
                    self.registration.registered.clear()
                    server.stop(grace=0)
                    try:
                        server.start()
                    except OSError as err:
                        log.warning("DRA plugin: %s", err)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._registry.stop(grace=0.5)
        self._service.stop(grace=0.5)
        self.registration.registered.clear()
