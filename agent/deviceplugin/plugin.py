"""Serving the device plugin and keeping it registered with kubelet, across kubelet restarts.

The plugin's life, in one thread (:meth:`DevicePlugin.start`):

1. wait for kubelet's registration socket ``<dir>/kubelet.sock`` (kubelet may
   start after the agent; nothing is created in the directory before it exists);
2. serve ``v1beta1.DevicePlugin`` on ``<dir>/rtdra-agent.sock``, then call
   ``Registration.Register`` on kubelet's socket (kubelet dials the plugin back at once);
3. watch both sockets: a kubelet restart deletes every plugin socket in the
   directory and creates a new ``kubelet.sock``, so either sign means "serve
   again and register again". A socket file is told apart by inode *and* change
   time: a recreated file may get the freed inode number back.

A failed registration never stops the agent: it is logged and retried with
exponential backoff (capped), and retried at once when kubelet's socket is
replaced. :meth:`DevicePlugin.stop` ends the streams and removes the plugin's
socket, which kubelet reads as the resource's devices going away.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Final

import grpc

from agent import grpcserver
from agent._generated.deviceplugin.v1beta1 import api_pb2, api_pb2_grpc
from agent.deviceplugin.service import DevicePluginService, options
from agent.kubelet import DEVICE_PLUGIN_DEVICES
from rtdra import names

log = logging.getLogger("rtdra-agent.deviceplugin")

#: The API version kubelet is told (upstream ``constants.go``: ``Version``).
API_VERSION: Final = "v1beta1"
#: kubelet's own socket in the device-plugin directory.
KUBELET_SOCKET: Final = "kubelet.sock"
#: The plugin's socket, relative to the directory: the ``endpoint`` kubelet dials.
ENDPOINT: Final = "rtdra-agent.sock"
DEFAULT_POLL_S: Final = 1.0
DEFAULT_BACKOFF_MAX_S: Final = 30.0
REGISTER_TIMEOUT_S: Final = 5.0


#: Which socket file: a recreated one may get the freed inode number back, but not the same change time.
Identity = tuple[int, int, int]


def _identity(path: Path) -> Identity | None:
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return info.st_dev, info.st_ino, info.st_ctime_ns


class DevicePlugin:
    """The ``rt.resource.example.com/dl`` device plugin in the kubelet device-plugin directory ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        devices: int = DEVICE_PLUGIN_DEVICES,
        poll_s: float = DEFAULT_POLL_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        cdi_device: bool = True,
    ) -> None:
        self.directory = directory
        self.service = DevicePluginService(devices, cdi_device=cdi_device)
        self.poll_s = poll_s
        self.backoff_max_s = backoff_max_s
        self.socket_path = directory / ENDPOINT
        self.kubelet_socket = directory / KUBELET_SOCKET
        #: Set after each successful registration (tests and logs wait on it); cleared on a new attempt.
        self.registered = threading.Event()
        self.registrations = 0
        self._server: grpcserver.UnixServer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="deviceplugin", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Until :meth:`stop`: serve and stay registered with whichever kubelet owns the directory."""
        registered_with: Identity | None = None
        backoff = self.poll_s
        waiting_logged = False
        try:
            while not self._stop.is_set():
                kubelet = _identity(self.kubelet_socket)
                if kubelet is None:
                    if not waiting_logged:
                        log.info("waiting for kubelet's device-plugin socket %s", self.kubelet_socket)
                        waiting_logged = True
                    registered_with = None
                    self._stop.wait(self.poll_s)
                    continue
                waiting_logged = False
                if kubelet == registered_with and self._server is not None and self._server.serving():
                    self._stop.wait(self.poll_s)
                    continue
                if registered_with is not None:
                    log.info("kubelet restarted or removed %s: serving and registering again", self.socket_path)
                self.registered.clear()
                try:
                    self._serve()
                    self._register()
                except (grpc.RpcError, OSError) as err:
                    log.warning(
                        "device plugin: registering %s with kubelet at %s failed (%s); retrying in %.1f s",
                        names.DL_RESOURCE,
                        self.kubelet_socket,
                        _describe(err),
                        backoff,
                    )
                    registered_with = None
                    self._wait_backoff(backoff, kubelet)
                    backoff = min(backoff * 2, self.backoff_max_s)
                    continue
                registered_with, backoff = kubelet, self.poll_s
                self.registrations += 1
                self.registered.set()
                log.info(
                    "device plugin: %s (%d slots) registered with kubelet, serving on %s",
                    names.DL_RESOURCE,
                    self.service.count,
                    self.socket_path,
                )
        finally:
            self._close()

    # -- steps --------------------------------------------------------------------

    def _wait_backoff(self, seconds: float, kubelet: Identity) -> None:
        """Sleep ``seconds`` before the next attempt, but not past a new kubelet socket: that one may answer."""
        deadline = time.monotonic() + seconds
        while not self._stop.wait(min(self.poll_s, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or _identity(self.kubelet_socket) != kubelet:
                return

    def _serve(self) -> None:
        """(Re)start the server unless it is serving on its socket already."""
        if self._server is not None:
            if self._server.serving():
                return
            self._server.stop(grace=0)
        server = grpcserver.UnixServer(
            self.socket_path, lambda s: api_pb2_grpc.add_DevicePluginServicer_to_server(self.service, s)
        )
        server.start()
        self._server = server

    def _register(self) -> None:
        request = api_pb2.RegisterRequest(
            version=API_VERSION, endpoint=ENDPOINT, resource_name=names.DL_RESOURCE, options=options()
        )
        with grpcserver.dial(self.kubelet_socket) as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=REGISTER_TIMEOUT_S)

    def _close(self) -> None:
        self.service.close()
        if self._server is not None:
            self._server.stop(grace=0.5)
            self._server = None
        self.registered.clear()


def _describe(err: grpc.RpcError | OSError) -> str:
    if isinstance(err, grpc.Call):
        return f"{err.code().name}: {err.details()}"
    return str(err)
