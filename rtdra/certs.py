"""``rtdra certs``: the webhook's certificate authority and serving certificate.

kube-apiserver calls the webhook over HTTPS at ``<service>.<namespace>.svc``
and checks the certificate's subject alternative names (a CN-only certificate
is refused), against the ``caBundle`` of the MutatingWebhookConfiguration.
This module makes both halves match: a small CA, a serving certificate whose
SANs are every name the service answers to (plus extra names and IPs on
request, e.g. ``127.0.0.1`` for a webhook registered by URL), and the CA as a
``caBundle`` - printed, or patched into the configuration.

Outputs: files (``ca.crt``, ``tls.crt``, ``tls.key``, and ``ca.key`` so that a
renewal keeps the same CA and the ``caBundle`` stays valid) and/or a
``kubernetes.io/tls`` Secret (``tls.crt``, ``tls.key``, ``ca.crt`` - never the
CA key). Keys are ECDSA P-256: small, and cheap to handshake.

``--client CN`` makes a client certificate instead (subject CN, extended key
usage clientAuth, no SANs), e.g. kube-scheduler's for the extender, whose
``--client-ca-file`` is then this CA's ``ca.crt``: the same files, the same CA
reuse, no openssl needed.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rtdra import names

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
TLS_CERT: Final = "tls.crt"
TLS_KEY: Final = "tls.key"
DEFAULT_SERVICE: Final = "rtdra-webhook"
DEFAULT_CLUSTER_DOMAIN: Final = "cluster.local"
DEFAULT_CA_NAME: Final = "rt-dra-webhook-ca"
DEFAULT_CLIENT_CA_NAME: Final = "rt-dra-client-ca"
#: Tolerate clocks a little behind ours.
_BACKDATE: Final = dt.timedelta(minutes=5)


def service_dns_names(service: str, namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> list[str]:
    """Every name a Service answers to in-cluster, most specific last."""
    names_ = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
    if cluster_domain:
        names_.append(f"{service}.{namespace}.svc.{cluster_domain}")
    return names_


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key, the kind every key made here is."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _usage(*, signer: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=signer,
        crl_sign=signer,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA certificate and its key (signs serving certificates)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, common_name: str = "rt-dra-webhook-ca", days: int = 3650) -> CertificateAuthority:
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(signer=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key must be an ECDSA key")
        return cls(x509.load_pem_x509_certificate(cert_pem), key)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    def issue(
        self,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server: bool = False,
        client: bool = False,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        days: int = 365,
    ) -> tuple[bytes, bytes]:
        """A leaf certificate signed by this CA: ``(cert_pem, key_pem)``.

        ``organizations`` become the subject's O= (Kubernetes groups of a client
        certificate); ``server``/``client`` set the extended key usages; ``dns``
        and ``ips`` become subject alternative names.
        """
        key = new_key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(signer=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)

    def issue_serving(
        self, dns_names: Sequence[str], ip_addresses: Sequence[str] = (), days: int = 365
    ) -> tuple[bytes, bytes]:
        """A server certificate for ``dns_names`` and ``ip_addresses`` (all as SANs): ``(cert_pem, key_pem)``."""
        if not dns_names and not ip_addresses:
            raise ValueError("a serving certificate needs at least one DNS name or IP address")
        subject = (list(dns_names) or list(ip_addresses))[-1]
        return self.issue(subject, server=True, dns=dns_names, ips=ip_addresses, days=days)


def ca_bundle(ca_pem: bytes) -> str:
    """The ``clientConfig.caBundle`` value: the CA PEM, base64-encoded."""
    return base64.b64encode(ca_pem).decode()


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_files(out: Path, ca: CertificateAuthority, cert_pem: bytes, key_pem: bytes) -> None:
    """``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key`` in ``out``; each replaced atomically, keys 0600.

    The key goes first: a server reloading between the two writes sees a
    mismatched pair, refuses it, and keeps its previous certificate.
    """
    out.mkdir(parents=True, exist_ok=True)
    _write_atomically(out / CA_KEY, ca.key_pem, 0o600)
    _write_atomically(out / CA_CERT, ca.cert_pem, 0o644)
    _write_atomically(out / TLS_KEY, key_pem, 0o600)
    _write_atomically(out / TLS_CERT, cert_pem, 0o644)


def write_secret(api: Any, namespace: str, name: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
    """Create or replace the ``kubernetes.io/tls`` Secret the webhook Deployment mounts."""
    from kubernetes import client  # noqa: PLC0415 - only this path needs the Kubernetes client
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    core = client.CoreV1Api(api)
    data = {TLS_CERT: cert_pem, TLS_KEY: key_pem, CA_CERT: ca_pem}
    body = client.V1Secret(
        api_version="v1",
        kind="Secret",
        type="kubernetes.io/tls",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "rt-dra"}),
        data={k: base64.b64encode(v).decode() for k, v in data.items()},
    )
    try:
        core.create_namespaced_secret(namespace, body)
    except ApiException as err:
        if err.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, body)


def patch_ca_bundle(api: Any, configuration: str, ca_pem: bytes) -> int:
    """Set ``caBundle`` on every webhook of a MutatingWebhookConfiguration; returns how many.

    A JSON Patch guarded by a ``test`` of the resourceVersion: a concurrent
    edit makes it fail rather than be overwritten.
    """
    from kubernetes import client  # noqa: PLC0415

    admission = client.AdmissionregistrationV1Api(api)
    current = admission.read_mutating_webhook_configuration(configuration)
    webhooks = current.webhooks or []
    version = current.metadata.resource_version if current.metadata is not None else None
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion", "value": version}]
    for index in range(len(webhooks)):
        ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": ca_bundle(ca_pem)})
    admission.patch_mutating_webhook_configuration(configuration, ops)
    return len(webhooks)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _load_or_create_ca(args: argparse.Namespace) -> CertificateAuthority:
    ca_cert, ca_key = args.ca_cert, args.ca_key
    reuse = args.out is not None and not args.new_ca and (args.out / CA_CERT).exists() and (args.out / CA_KEY).exists()
    if ca_cert is None and reuse:
        ca_cert, ca_key = args.out / CA_CERT, args.out / CA_KEY
    if ca_cert is not None:
        return CertificateAuthority.from_pem(Path(ca_cert).read_bytes(), Path(ca_key).read_bytes())
    return CertificateAuthority.create(DEFAULT_CLIENT_CA_NAME if args.client else DEFAULT_CA_NAME, days=args.ca_days)


def certs_command(args: argparse.Namespace) -> int:
    if (args.ca_cert is None) != (args.ca_key is None):
        print("rtdra certs: --ca-cert and --ca-key go together", file=sys.stderr)
        return 2
    if args.out is None and args.secret is None and not args.print_ca_bundle and args.patch_webhook is None:
        print("rtdra certs: say where the certificate goes: --out DIR and/or --secret NAME", file=sys.stderr)
        return 2
    try:
        for ip in args.ip:
            ipaddress.ip_address(ip)
    except ValueError as err:
        print(f"rtdra certs: --ip: {err}", file=sys.stderr)
        return 2
    if args.client is not None and (args.dns or args.ip or args.patch_webhook is not None):
        print("rtdra certs: --client makes a client certificate: no --dns, --ip or --patch-webhook", file=sys.stderr)
        return 2
    ca = _load_or_create_ca(args)
    if args.client is not None:
        cert_pem, key_pem = ca.issue(args.client, client=True, days=args.days)
        what = f"client certificate CN={args.client}"
    else:
        dns = [*service_dns_names(args.service, args.namespace, args.cluster_domain), *args.dns]
        cert_pem, key_pem = ca.issue_serving(dns, args.ip, days=args.days)
        what = f"SANs: {', '.join(dns + args.ip)}"
    if args.out is not None:
        write_files(args.out, ca, cert_pem, key_pem)
        written = ", ".join(str(args.out / f) for f in (CA_CERT, TLS_CERT, TLS_KEY))
        print(f"wrote {written} ({what})")
    if args.secret is not None or args.patch_webhook is not None:
        from rtdra.kube import api_client  # noqa: PLC0415

        api = api_client(args.kubeconfig)
        if args.secret is not None:
            write_secret(api, args.namespace, args.secret, ca.cert_pem, cert_pem, key_pem)
            print(f"wrote Secret {args.namespace}/{args.secret}")
        if args.patch_webhook is not None:
            count = patch_ca_bundle(api, args.patch_webhook, ca.cert_pem)
            print(f"patched caBundle of {count} webhook(s) in MutatingWebhookConfiguration {args.patch_webhook}")
    if args.print_ca_bundle:
        print(ca_bundle(ca.cert_pem))
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``certs`` to the ``rtdra`` command's subcommands."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "certs",
        help="make the webhook's CA and serving certificate (files or a Secret) and its caBundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--service", default=DEFAULT_SERVICE, help="the webhook's Service (default %(default)s)")
    p.add_argument("--namespace", default=names.DEFAULT_NAMESPACE, help="its namespace (default %(default)s)")
    p.add_argument("--cluster-domain", default=DEFAULT_CLUSTER_DOMAIN, help="'' to omit the FQDN SAN")
    p.add_argument("--dns", action="append", default=[], metavar="NAME", help="extra DNS SAN (repeatable)")
    p.add_argument("--ip", action="append", default=[], metavar="ADDR", help="extra IP SAN, e.g. 127.0.0.1")
    p.add_argument(
        "--client",
        metavar="CN",
        help="make a client certificate for CN instead (clientAuth, no SANs), e.g. kube-scheduler's for the extender",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="write ca.crt, ca.key, tls.crt, tls.key here")
    p.add_argument("--secret", metavar="NAME", help="write a kubernetes.io/tls Secret NAME in --namespace")
    p.add_argument("--print-ca-bundle", action="store_true", help="print the caBundle (base64 CA PEM)")
    p.add_argument("--patch-webhook", metavar="CONFIG", help="set caBundle in this MutatingWebhookConfiguration")
    p.add_argument("--kubeconfig", help="for --secret / --patch-webhook (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("--ca-cert", type=Path, help="sign with this CA (default: DIR's ca.crt/ca.key, else a new CA)")
    p.add_argument("--ca-key", type=Path)
    p.add_argument("--new-ca", action="store_true", help="make a new CA even if DIR has one")
    p.add_argument("--days", type=int, default=365, help="serving certificate validity (default %(default)s)")
    p.add_argument("--ca-days", type=int, default=3650, help="new CA validity (default %(default)s)")
    p.set_defaults(func=certs_command)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rtdra.certs ...`` (the same as ``rtdra certs ...``)."""
    parser = argparse.ArgumentParser(prog="rtdra")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["certs", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
