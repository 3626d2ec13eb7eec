"""``rtdra-webhook`` as deployed: gunicorn over HTTPS, in a subprocess on 127.0.0.1.

Proves the TLS wiring (including certificate renewal without a restart), the
multi-worker metrics, and the console script's flags. Every server started
here is terminated, even when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from rtdra.certs import CertificateAuthority, write_files
from rtdra.cli import main as rtdra_main
from webhook.tls import ReloadingContext

REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "default",
        "operation": "CREATE",
        "userInfo": {"username": "alice"},
        "object": {
            "metadata": {"annotations": {"rt.resource.example.com/container.app": "runtime=1ms,period=10ms"}},
            "spec": {"containers": [{"name": "app", "image": "x"}]},
        },
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    ca: Path
    log: Path

    def presented_certificate(self) -> bytes:
        """The DER certificate the server presents on a new connection."""
        context = ssl.create_default_context(cafile=str(self.ca))
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


def start_server(cert_dir: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log = tmp_path / "webhook.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhook.cli",
            "--bind",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(cert_dir / "tls.crt"),
            "--tls-key",
            str(cert_dir / "tls.key"),
            *extra,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    server = Server(process, f"https://127.0.0.1:{port}", port, cert_dir / "ca.crt", log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rtdra-webhook exited {process.returncode}: {log.read_text()}")
        try:
            if requests.get(server.url + "/healthz", verify=str(server.ca), timeout=1).ok:
                return server
        except requests.RequestException:
            time.sleep(0.1)
    stop_server(server)
    raise AssertionError(f"rtdra-webhook did not become healthy: {log.read_text()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(5)


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    assert (
        rtdra_main(
            ["certs", "--service", "rtdra-webhook", "--namespace", "rt-dra", "--ip", "127.0.0.1", "--out", str(out)]
        )
        == 0
    )
    return out


@pytest.fixture
def server(cert_dir: Path, tmp_path: Path) -> Iterator[Server]:
    started = start_server(cert_dir, tmp_path, "--workers", "2", "--threads", "2")
    try:
        yield started
    finally:
        stop_server(started)


def _der(pem_file: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem_file.read_bytes()).public_bytes(serialization.Encoding.DER)


def test_server_answers_admission_reviews_over_https(server: Server) -> None:
    reply = requests.post(server.url + "/mutate", json=REVIEW, verify=str(server.ca), timeout=5)
    assert reply.status_code == 200
    body = reply.json()
    assert body["response"]["uid"] == "u-1" and body["response"]["allowed"] is True
    assert body["response"]["patchType"] == "JSONPatch"
    bad = requests.post(server.url + "/mutate", data=b"{", verify=str(server.ca), timeout=5)
    assert bad.status_code == 400 and "error" in bad.json()


def test_server_presents_a_renewed_certificate_without_restarting(server: Server, cert_dir: Path) -> None:
    before = server.presented_certificate()
    assert before == _der(cert_dir / "tls.crt")
    assert (
        rtdra_main(
            [
                "certs",
                "--service",
                "rtdra-webhook",
                "--namespace",
                "rt-dra",
                "--ip",
                "127.0.0.1",
                "--out",
                str(cert_dir),
            ]
        )
        == 0
    )
    renewed = _der(cert_dir / "tls.crt")
    assert renewed != before
    # every worker sees the new files on its next connection; try a few to reach both workers
    presented = {server.presented_certificate() for _ in range(6)}
    assert presented == {renewed}
    assert server.process.poll() is None
    assert requests.get(server.url + "/healthz", verify=str(server.ca), timeout=5).ok


def test_metrics_add_up_across_worker_processes(server: Server) -> None:
    for _ in range(5):  # new connection each time, so both workers take some
        requests.post(
            server.url + "/mutate", json=REVIEW, verify=str(server.ca), timeout=5, headers={"Connection": "close"}
        )
    totals = []
    for _ in range(3):  # whichever worker answers /metrics reports the sum
        text = requests.get(server.url + "/metrics", verify=str(server.ca), timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith('rtdra_webhook_admissions_total{outcome="mutated"}'))
        totals.append(float(line.split()[-1]))
    assert totals == [5.0, 5.0, 5.0]


def test_server_refuses_to_start_without_tls_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "--bind", "127.0.0.1:0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--tls-cert and --tls-key are required" in result.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhook.cli",
            "--tls-cert",
            str(tmp_path / "no.crt"),
            "--tls-key",
            str(tmp_path / "no.key"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_half_written_certificate_pair_keeps_the_previous_context(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    cert, key = ca.issue_serving(["a.b.svc"])
    write_files(tmp_path, ca, cert, key)
    reloading = ReloadingContext(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    first = reloading.get()
    assert reloading.get() is first  # unchanged files: the same context, no reload
    new_cert, new_key = ca.issue_serving(["a.b.svc"])
    (tmp_path / "tls.crt").write_bytes(new_cert)  # the key is not there yet
    assert reloading.get() is first
    (tmp_path / "tls.key").write_bytes(new_key)
    assert reloading.get() is not first
