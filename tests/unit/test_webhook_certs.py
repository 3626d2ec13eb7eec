"""``rtdra certs``: the SAN logic, proven with real TLS handshakes, and the files it writes."""

from __future__ import annotations

import base64
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from rtdra import certs
from rtdra.cli import main as rtdra_main


def test_service_names_cover_every_way_the_service_is_dialled() -> None:
    assert certs.service_dns_names("rtdra-webhook", "rt-dra") == [
        "rtdra-webhook",
        "rtdra-webhook.rt-dra",
        "rtdra-webhook.rt-dra.svc",
        "rtdra-webhook.rt-dra.svc.cluster.local",
    ]
    assert certs.service_dns_names("s", "n", "") == ["s", "s.n", "s.n.svc"]


def _handshake(cert_dir: Path, server_name: str) -> None:
    """A TLS handshake to a server using ``cert_dir``'s certificate, verifying it as ``server_name``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    client_ctx = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            client_ctx.wrap_socket(raw, server_hostname=server_name).close()
    finally:
        thread.join(5)
        listener.close()


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    assert (
        rtdra_main(
            ["certs", "--service", "rtdra-webhook", "--namespace", "rt-dra", "--out", str(out), "--ip", "127.0.0.1"]
        )
        == 0
    )
    return out


@pytest.mark.parametrize(
    "name",
    [
        "rtdra-webhook",
        "rtdra-webhook.rt-dra",
        "rtdra-webhook.rt-dra.svc",
        "rtdra-webhook.rt-dra.svc.cluster.local",
        "127.0.0.1",
    ],
)
def test_certificate_verifies_for_every_service_name_and_extra_ip(cert_dir: Path, name: str) -> None:
    _handshake(cert_dir, name)


@pytest.mark.parametrize("name", ["other.rt-dra.svc", "rtdra-webhook.default.svc", "127.0.0.2", "localhost"])
def test_certificate_is_refused_for_any_other_name(cert_dir: Path, name: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
        _handshake(cert_dir, name)


def test_certificate_is_a_server_certificate_with_sans_and_no_ca_powers(cert_dir: Path) -> None:
    cert = x509.load_pem_x509_certificate((cert_dir / "tls.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "rtdra-webhook.rt-dra.svc" in sans.get_values_for_type(x509.DNSName)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_files_are_written_with_private_keys_unreadable_by_others(cert_dir: Path) -> None:
    assert sorted(p.name for p in cert_dir.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    for key in ("tls.key", "ca.key"):
        assert stat.S_IMODE((cert_dir / key).stat().st_mode) == 0o600


def test_renewal_keeps_the_ca_so_the_ca_bundle_stays_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["certs", "--service", "s", "--namespace", "n", "--out", str(tmp_path), "--print-ca-bundle"]
    assert rtdra_main(args) == 0
    bundle = capsys.readouterr().out.strip().splitlines()[-1]
    first_ca, first_cert = (tmp_path / "ca.crt").read_bytes(), (tmp_path / "tls.crt").read_bytes()
    assert base64.b64decode(bundle) == first_ca
    assert rtdra_main(args) == 0
    assert (tmp_path / "ca.crt").read_bytes() == first_ca
    assert (tmp_path / "tls.crt").read_bytes() != first_cert
    _handshake(tmp_path, "s.n.svc")
    assert rtdra_main([*args, "--new-ca"]) == 0
    assert (tmp_path / "ca.crt").read_bytes() != first_ca


def test_certs_needs_a_destination_and_valid_ips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rtdra_main(["certs", "--service", "s"]) == 2
    assert "--out" in capsys.readouterr().err
    assert rtdra_main(["certs", "--out", str(tmp_path), "--ip", "not-an-ip"]) == 2
    assert "--ip" in capsys.readouterr().err
    assert not (tmp_path / "tls.crt").exists()


def _client_handshake(client_ca: Path, cert: Path, key: Path, server_dir: Path) -> str:
    """A mutual-TLS handshake to a server that trusts ``client_ca`` for clients; the client's CN as it saw it."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_dir / "tls.crt", server_dir / "tls.key")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cafile=str(client_ca))
    client_ctx = ssl.create_default_context(cafile=str(server_dir / "ca.crt"))
    client_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []
    errors: list[BaseException] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                subject = dict(pair for rdn in tls.getpeercert()["subject"] for pair in rdn)
                seen.append(str(subject["commonName"]))
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.recv(2)
    finally:
        thread.join(5)
        listener.close()
    if errors:
        raise errors[0]
    return seen[0]


def test_client_certificate_is_accepted_by_a_server_trusting_its_ca(cert_dir: Path, tmp_path: Path) -> None:
    """``--client kube-scheduler``: what the extender's --client-ca-file (this ca.crt) lets in, without openssl."""
    client_dir = tmp_path / "client"
    assert rtdra_main(["certs", "--client", "kube-scheduler", "--out", str(client_dir)]) == 0
    assert sorted(p.name for p in client_dir.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert stat.S_IMODE((client_dir / "tls.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((client_dir / "tls.crt").read_bytes())
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    ca = client_dir / "ca.crt"
    seen = _client_handshake(ca, client_dir / "tls.crt", client_dir / "tls.key", cert_dir)
    assert seen == "kube-scheduler"
    # A serving certificate is not a client certificate, and another CA's client is not trusted.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _client_handshake(ca, cert_dir / "tls.crt", cert_dir / "tls.key", cert_dir)
    other = tmp_path / "other"
    assert rtdra_main(["certs", "--client", "kube-scheduler", "--out", str(other)]) == 0
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _client_handshake(ca, other / "tls.crt", other / "tls.key", cert_dir)


def test_client_certificate_takes_no_server_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rtdra_main(["certs", "--client", "kube-scheduler", "--out", str(tmp_path), "--ip", "127.0.0.1"]) == 2
    assert "--client" in capsys.readouterr().err
    assert not (tmp_path / "tls.crt").exists()
