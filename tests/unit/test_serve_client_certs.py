"""rtdra.serve with a client CA (the extender's and the webhook's client CA file), under real gunicorn over TLS.

kubelet's HTTPS probes present no client certificate: they must reach /healthz and /readyz (else the
extender's Deployment never becomes Ready - seen when it first ran in a pod, tests/e2e/test_install.py),
while every other path keeps needing a certificate signed by the client CA.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtdra.cli import main as rtdra_main

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hack.procs import free_port  # noqa: E402

SERVER = textwrap.dedent(
    """
    import sys
    from rtdra import serve
    from rtdra.settings import Listen

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    cert, key, ca, bind = sys.argv[1:]
    listen = Listen(bind=bind, workers=1, threads=2, tls_cert_file=cert, tls_key_file=key, client_ca_file=ca)
    serve.run(serve.gunicorn_options("t", listen), lambda: app)  # run() itself checks the certificates
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    d = tmp_path_factory.mktemp("serve")
    assert rtdra_main(["certs", "--service", "x", "--ip", "127.0.0.1", "--out", str(d / "server")]) == 0
    assert rtdra_main(["certs", "--client", "kube-scheduler", "--out", str(d / "client")]) == 0
    assert rtdra_main(["certs", "--client", "kube-scheduler", "--out", str(d / "stranger")]) == 0
    (d / "server.py").write_text(SERVER)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(d / "server.py"), str(d / "server" / "tls.crt"), str(d / "server" / "tls.key"),
         str(d / "client" / "ca.crt"), f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                get(url + "/healthz", d)
                break
            except (urllib.error.URLError, OSError):
                assert proc.poll() is None, "the server exited"
                time.sleep(0.1)
        yield url, d
    finally:
        proc.terminate()
        proc.wait(30)


def get(url: str, d: Path, client: str | None = None) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(d / "server" / "ca.crt"))
    if client is not None:
        ctx.load_cert_chain(d / client / "tls.crt", d / client / "tls.key")
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def test_probes_need_no_client_certificate(server: tuple[str, Path]) -> None:
    url, d = server
    assert get(url + "/healthz", d) == (200, "/healthz")
    assert get(url + "/readyz", d) == (200, "/readyz")


def test_every_other_path_needs_the_client_certificate(server: tuple[str, Path]) -> None:
    url, d = server
    for path in ("/filter", "/bind", "/metrics", "/readyz/x"):
        assert get(url + path, d)[0] == 403, path
        assert get(url + path, d, "client") == (200, path)


def test_a_certificate_of_another_ca_is_refused_at_the_handshake(server: tuple[str, Path]) -> None:
    url, d = server
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        get(url + "/healthz", d, "stranger")
