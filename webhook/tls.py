"""Serving TLS from certificate files that may be renewed while we run.

cert-manager, a Secret update or ``rtdra certs`` replace ``tls.crt``/``tls.key``
in place (a mounted Secret swaps a symlink). Restarting the webhook for that
would drop admissions, so the server asks :class:`ReloadingContext` for its
SSLContext on every new connection (gunicorn's ``ssl_context`` hook is called
per accepted connection by the sync and gthread workers): the files are
``stat``-ed, and only when they changed is a new context built. A half-written
pair (new certificate, old key) fails to load; the old context keeps serving
and the next connection tries again.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int], ...]


def _stamp(*paths: str) -> Stamp:
    out = []
    for path in paths:
        st = os.stat(path)  # follows the Secret volume's ..data symlink
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with modern defaults (TLS 1.2+) for ``cert_file``/``key_file``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


class ReloadingContext:
    """The current SSLContext for a certificate/key pair, rebuilt when the files change."""

    def __init__(self, cert_file: str, key_file: str, factory: Callable[[], ssl.SSLContext] | None = None) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._factory = factory or (lambda: server_context(cert_file, key_file))
        self._lock = threading.Lock()
        self._stamp = _stamp(cert_file, key_file)
        self._context = self._factory()  # fail loudly at start-up

    def get(self) -> ssl.SSLContext:
        try:
            stamp = _stamp(self.cert_file, self.key_file)
        except OSError:
            return self._context  # mid-rotation: a file is briefly missing
        if stamp == self._stamp:
            return self._context
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._context = self._factory()
                except (OSError, ssl.SSLError, ValueError) as err:
                    log.warning("keeping the previous certificate: cannot load %s: %s", self.cert_file, err)
                    return self._context
                self._stamp = stamp
                log.info("loaded renewed certificate %s", self.cert_file)
            return self._context


_contexts: dict[tuple[str, str], ReloadingContext] = {}
_contexts_lock = threading.Lock()


def gunicorn_ssl_context(conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """gunicorn's ``ssl_context`` server hook: one reloading context per worker and file pair."""
    key = (str(conf.certfile), str(conf.keyfile))
    reloading = _contexts.get(key)
    if reloading is None:
        with _contexts_lock:
            reloading = _contexts.get(key)
            if reloading is None:

                def factory() -> ssl.SSLContext:
                    context = default_factory()
                    context.minimum_version = ssl.TLSVersion.TLSv1_2
                    return context

                reloading = _contexts[key] = ReloadingContext(key[0], key[1], factory)
    return reloading.get()
