"""The kubelet API's serving certificate: the configured pair, or a self-signed one like kubelet's.

When no ``--tls-cert-file``/``--tls-private-key-file`` is given, kubelet generates a self-signed
certificate for its hostname and IPs and keeps it under its root dir; vnode does the same (an EC
P-256 key, one year of validity). An existing pair is reused as long as it is valid for at least a
day more and names every requested host and IP, so restarts keep the same certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vnode import errors

log = logging.getLogger(__name__)

VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=1)


def _covers(cert_path: Path, hostnames: Sequence[str], ips: Sequence[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    names = set(san.get_values_for_type(x509.DNSName))
    addresses = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return set(hostnames) <= names and {str(ipaddress.ip_address(i)) for i in ips} <= addresses


def ensure_self_signed(
    cert_path: Path, key_path: Path, *, hostnames: Sequence[str], ips: Sequence[str]
) -> bool:
    """Make sure a self-signed pair for these names exists; True if a new one was written."""
    if cert_path.exists() and key_path.exists() and _covers(cert_path, hostnames, ips):
        return False
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{hostnames[0]}@{int(now.timestamp())}")])
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    san += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(key_path, key_bytes, 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("wrote a self-signed serving certificate %s for %s", cert_path, ", ".join([*hostnames, *ips]))
    return True


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def server_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A TLS ≥ 1.2 server context for the pair; a clear ConfigError if it can't be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError(
            "server.tlsCertFile", f"cannot load {cert_path} / {key_path}: {exc}"
        ) from exc
    return context
