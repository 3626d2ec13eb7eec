"""The control plane's certificates, keys and kubeconfigs, made with ``rtdra.certs``.

The same certificate authority code ``rtdra certs`` uses for the webhook
issues everything here, laid out as kubeadm does: a cluster CA (kube-apiserver's
serving certificate and every client identity), a front-proxy CA (request-header
authentication, so kube-scheduler's delegated authentication finds a complete
``extension-apiserver-authentication`` ConfigMap) and the service-account token
signing key pair. Client identities are X.509: the certificate's CN is the
user, its O entries the groups.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization

from rtdra.certs import CertificateAuthority, new_key, private_key_pem

#: kube-apiserver's serving certificate answers to these names (and 127.0.0.1 and the Service IP).
APISERVER_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
#: Every certificate made here is for a throw-away test cluster.
DAYS = 30


def write_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path`` created with ``mode`` (keys stay 0600 from the first byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca_pem: bytes,
    user: str,
    *,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    token: str | None = None,
) -> Path:
    """A kubeconfig (mode 0600) for ``server``, authenticating by client certificate or bearer ``token``."""
    user_entry: dict[str, Any] = {}
    if cert_pem is not None:
        user_entry["client-certificate-data"] = _b64(cert_pem)
        user_entry["client-key-data"] = _b64(key_pem or b"")
    if token is not None:
        user_entry["token"] = token
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "rt-dra", "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": "rt-dra", "context": {"cluster": "rt-dra", "user": user}}],
        "current-context": "rt-dra",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_file(path, yaml.safe_dump(cfg, sort_keys=False).encode())


def client_kubeconfig(
    ca: CertificateAuthority, path: Path, server: str, username: str, groups: Sequence[str] = (), *, user: str = ""
) -> Path:
    """A kubeconfig authenticating as ``username`` in ``groups`` with a client certificate ``ca`` issues.

    ``user`` names the kubeconfig's user entry (default: ``username``).
    """
    cert, key = ca.issue(username, list(groups), client=True)
    return write_kubeconfig(path, server, ca.cert_pem, user or username, cert_pem=cert, key_pem=key)


def write_control_plane_pki(pki: Path, service_ip: str) -> CertificateAuthority:
    """Write the files kube-apiserver's flags name into ``pki``; return the cluster CA.

    ``ca.crt``/``ca.key``, ``apiserver.crt/.key`` (serving, for the
    :data:`APISERVER_DNS` names, 127.0.0.1 and ``service_ip``),
    ``apiserver-kubelet-client.crt/.key``, ``front-proxy-ca.crt``,
    ``front-proxy-client.crt/.key``, ``sa.key``/``sa.pub`` (service-account
    tokens) and ``admin.crt/.key`` (system:masters, for health probes).
    """
    ca = CertificateAuthority.create("rt-dra-e2e-ca", days=DAYS)
    write_file(pki / "ca.crt", ca.cert_pem, 0o644)
    write_file(pki / "ca.key", ca.key_pem)
    front_proxy = CertificateAuthority.create("rt-dra-e2e-front-proxy-ca", days=DAYS)
    write_file(pki / "front-proxy-ca.crt", front_proxy.cert_pem, 0o644)
    issued = {
        "apiserver": ca.issue("kube-apiserver", server=True, dns=list(APISERVER_DNS), ips=["127.0.0.1", service_ip]),
        # kube-apiserver -> kubelet client identity (a real node's kubelet checks it)
        "apiserver-kubelet-client": ca.issue("kube-apiserver-kubelet-client", ["kubeadm:cluster-admins"], client=True),
        "admin": ca.issue("kubernetes-admin", ["system:masters"], client=True),
        "front-proxy-client": front_proxy.issue("front-proxy-client", client=True),
    }
    for name, (cert, key) in issued.items():
        write_file(pki / f"{name}.crt", cert, 0o644)
        write_file(pki / f"{name}.key", key)
    sa = new_key()
    write_file(pki / "sa.key", private_key_pem(sa))
    public = sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_file(pki / "sa.pub", public, 0o644)
    return ca
