"""The PKI of a real test cluster, laid out as kubeadm lays out ``/etc/kubernetes/pki``.

One cluster CA signs the API servers' serving certificate, every client certificate (admin,
controller-manager, scheduler, the API servers' kubelet client, nodes) and, through the
controller-manager's CSR signer, what nodes request. A separate front-proxy CA serves the
aggregation layer, and one key pair signs service-account tokens. EC P-256 throughout.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIFETIME = dt.timedelta(days=30)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Authority:
    """A CA on disk (``<name>.crt``/``<name>.key``), made once, issuing leaf certificates beside it."""

    def __init__(self, directory: Path, name: str, common_name: str) -> None:
        self.dir = directory
        self.cert = directory / f"{name}.crt"
        self.key = directory / f"{name}.key"
        if not self.cert.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            now = dt.datetime.now(dt.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + LIFETIME)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        key_cert_sign=True,
                        crl_sign=True,
                        content_commitment=False,
                        key_encipherment=True,
                        data_encipherment=False,
                        key_agreement=False,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .sign(key, hashes.SHA256())
            )
            _write(self.key, _key_pem(key), 0o600)
            _write(self.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def pin(self) -> str:
        """``sha256:<hex>`` of the CA's public key, as ``--discovery-token-ca-cert-hash`` takes it."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        der = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "sha256:" + hashlib.sha256(der).hexdigest()

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        server_names: tuple[str, ...] = (),
        client: bool = True,
    ) -> tuple[Path, Path]:
        """A leaf ``<name>.crt``/``<name>.key``: a client's, and a server's when it has names."""
        cert_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        ca_key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca = x509.load_pem_x509_certificate(self.cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + LIFETIME)
        )
        if server_names:
            sans: list[x509.GeneralName] = []
            for n in server_names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(key_path, _key_pem(key), 0o600)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert_path, key_path


class ClusterPki:
    """Everything a kubeadm control plane keeps under ``pki/``, made on first use."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca = Authority(directory, "ca", "kubernetes")
        self.front_proxy = Authority(directory, "front-proxy-ca", "front-proxy-ca")
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"
        if not self.sa_key.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            pub = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            _write(self.sa_key, _key_pem(key), 0o600)
            _write(self.sa_pub, pub, 0o644)
        self.apiserver = self.ca.issue(
            "apiserver",
            "kube-apiserver",
            client=False,
            server_names=(
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.96.0.1",
            ),
        )
        self.kubelet_client = self.ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
        self.front_proxy_client = self.front_proxy.issue("front-proxy-client", "front-proxy-client")
        self.admin = self.ca.issue("admin", "kubernetes-admin", organizations=("system:masters",))
        self.controller_manager = self.ca.issue("controller-manager", "system:kube-controller-manager")
        self.scheduler = self.ca.issue("scheduler", "system:kube-scheduler")

    def node(self, name: str, ip: str = "127.0.0.1") -> tuple[tuple[Path, Path], tuple[Path, Path]]:
        """A node's client certificate (``system:node:<name>`` in ``system:nodes``, what the
        Node authorizer and NodeRestriction act on) and a serving certificate for its kubelet API."""
        client = self.ca.issue(f"node-{name}", f"system:node:{name}", organizations=("system:nodes",))
        serving = self.ca.issue(
            f"node-{name}-serving",
            f"system:node:{name}",
            organizations=("system:nodes",),
            server_names=(name, ip),
            client=False,
        )
        return client, serving
