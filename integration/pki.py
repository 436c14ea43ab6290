"""A test cluster's PKI: one CA per store, a serving certificate per master, client certificates.

Files live beside the store (``<store>.pki/``) so that every master of one cluster shares the CA,
as a real control plane's masters do, and one kubeconfig works against all of them. Keys are EC
P-256; everything is created once and reused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class ClusterPki:
    def __init__(self, store: Path) -> None:
        self.dir = Path(str(store) + ".pki")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_cert = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        if not self.ca_cert.exists():
            self._make_ca()

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vnode-test-ca")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        tmp = self.dir / f"ca.key.{os.getpid()}"
        _write(tmp, _key_pem(key))
        _write(self.dir / f"ca.crt.{os.getpid()}", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        os.replace(tmp, self.ca_key)
        os.replace(self.dir / f"ca.crt.{os.getpid()}", self.ca_cert)

    def issue(self, name: str, *, server: bool, organization: str | None = None) -> tuple[Path, Path]:
        """A certificate signed by the CA: for serving on 127.0.0.1/localhost, or a client's."""
        cert_path, key_path = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        if organization:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
        )  # fmt: skip
        if server:
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        _write(key_path, _key_pem(key))
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert_path, key_path
