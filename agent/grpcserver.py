"""A gRPC server on a unix socket, and a client channel to one: what every kubelet plugin of the agent needs.

Kubelet speaks gRPC over unix sockets to its plugins (the device plugin in
:mod:`agent.deviceplugin`; a DRA kubelet plugin would be the next). This module
is the one place that binds such a socket, serves the servicers given to it
and takes the socket away again, so the plugins only implement their RPCs.

Deliberately left out: TLS (a unix socket's file permissions are the access
control kubelet relies on), reflection and health services (kubelet uses
neither).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Final

import grpc

#: One thread per concurrent RPC. Kubelet keeps one stream open (ListAndWatch) and makes
#: short calls one at a time per plugin; a few spare threads let a new stream start while
#: an old one is still being cancelled.
DEFAULT_WORKERS: Final = 8


def unix_target(path: Path) -> str:
    """The gRPC address of a unix socket (``unix:`` + absolute path; gRPC has no relative form here)."""
    return f"unix:{path.absolute()}"


def dial(path: Path) -> grpc.Channel:
    """An insecure channel to the unix socket at ``path`` (connected lazily, on the first call)."""
    return grpc.insecure_channel(unix_target(path))


class UnixServer:
    """Serves what ``register`` adds to a :class:`grpc.Server` on the unix socket ``path``.

    :meth:`start` replaces a stale socket file left by an earlier run; :meth:`stop`
    cancels running RPCs (streams end) after ``grace`` seconds and removes the
    socket - only if it is still the one this server bound, so a server stopped
    late never deletes its successor's socket.
    """

    def __init__(self, path: Path, register: Callable[[grpc.Server], None], *, workers: int = DEFAULT_WORKERS) -> None:
        self.path = path
        self._register = register
        self._workers = workers
        self._server: grpc.Server | None = None
        self._inode: tuple[int, int] | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError(f"gRPC server on {self.path} already started")
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="grpc"))
        self._register(server)
        try:
            bound = server.add_insecure_port(unix_target(self.path))
        except RuntimeError as err:  # grpcio raises instead of returning 0 on some versions
            raise OSError(f"cannot listen on {self.path}: {err}") from None
        if bound == 0:
            raise OSError(f"cannot listen on {self.path}")
        server.start()
        info = self.path.stat()
        self._server, self._inode = server, (info.st_dev, info.st_ino)

    def serving(self) -> bool:
        """Whether this server's socket file is still there (kubelet deletes plugin sockets when it restarts)."""
        if self._inode is None:
            return False
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return False
        return (info.st_dev, info.st_ino) == self._inode

    def stop(self, grace: float = 1.0) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(grace).wait()
        if self.serving():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._inode = None
