"""The X.509 work of join and rotation: keys, CSRs, CA pins, certificate facts.

Importing ``cryptography`` costs the agent about 10 MiB of resident memory for work done once a
year, so the node never imports this module: ``vnode.security.bootstrap.keys_helper`` runs it as
a short-lived child (``python -m vnode.security.keys OP``, JSON in on stdin, JSON out on stdout),
as ``vnode.security.tls`` does for the self-signed pair. The ``vnode certs`` commands, which are
short-lived themselves, import it directly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import sys
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; ValueError if there is none."""
    certs = x509.load_pem_x509_certificates(pem)
    if not certs:
        raise ValueError("no certificate in the PEM data")
    return certs


def is_self_signed(pem: str) -> bool:
    """Whether the first certificate in ``pem`` is issued by its own subject (so it can be its own
    CA in a kubeconfig); False for anything that does not parse."""
    try:
        certs = load_certificates(pem.encode())
    except ValueError:
        return False
    return bool(certs) and certs[0].issuer == certs[0].subject


def public_key_pin(cert: x509.Certificate) -> str:
    """kubeadm's CA pin: ``sha256:`` and the hex SHA-256 of the DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def pins(pem: bytes) -> list[str]:
    return [public_key_pin(c) for c in load_certificates(pem)]


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_csr(
    common_name: str, organizations: Sequence[str], dns: Sequence[str] = (), ips: Sequence[str] = ()
) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM) for a fresh EC P-256 key, client-go's default key type."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def describe(pem: bytes) -> dict[str, Any]:
    """What rotation and ``vnode certs show`` need of the first certificate of ``pem``."""
    cert = load_certificates(pem)[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "notBefore": cert.not_valid_before_utc.timestamp(),
        "notAfter": cert.not_valid_after_utc.timestamp(),
        "dns": sorted(dns),
        "ips": sorted(ips),
        "serial": format(cert.serial_number, "x"),
    }


def issue(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    organizations: Sequence[str],
    validity: dt.timedelta,
) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM): a client certificate signed directly by a CA (``vnode certs issue``)."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = load_certificates(ca_cert_pem)[0]
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(min(now + validity, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def new_ca(common_name: str, validity: dt.timedelta) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) of a self-signed CA (``vnode certs ca``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def main(argv: list[str] | None = None) -> int:
    """The child's entry point: ``pins``, ``csr`` or ``describe``, JSON in and out."""
    op = (argv if argv is not None else sys.argv[1:])[0]
    request = json.load(sys.stdin)
    try:
        if op == "pins":
            answer: dict[str, Any] = {"pins": pins(request["pem"].encode())}
        elif op == "csr":
            key, csr = new_csr(request["cn"], request["o"], request.get("dns", []), request.get("ips", []))
            answer = {"key": key.decode(), "csr": csr.decode()}
        elif op == "describe":
            answer = describe(request["pem"].encode())
        else:
            answer = {"error": f"unknown operation {op!r}"}
    except (ValueError, KeyError, TypeError) as exc:
        answer = {"error": str(exc) or type(exc).__name__}
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
