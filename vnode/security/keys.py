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
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vnode.security import profiles

BACKDATE = dt.timedelta(minutes=5)  # clocks at the edge drift: valid a little before it was made
KEY_USAGES = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)  # fmt: skip
EXTENDED = {"client_auth": ExtendedKeyUsageOID.CLIENT_AUTH, "server_auth": ExtendedKeyUsageOID.SERVER_AUTH}


def new_key() -> ec.EllipticCurvePrivateKey:
    """Every profile's key: EC P-256 (client-go's default key type)."""
    return ec.generate_private_key(ec.SECP256R1())


def build(
    prof: profiles.Profile,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    *,
    issuer: x509.Name | None = None,
    signer: ec.EllipticCurvePrivateKey,
    sans: Sequence[x509.GeneralName] = (),
    validity: dt.timedelta | None = None,
    not_after_at_most: dt.datetime | None = None,
) -> x509.Certificate:
    """A certificate of ``prof`` for ``subject``; self-signed when ``issuer`` is None."""
    now = dt.datetime.now(dt.UTC)
    lifetime = validity or prof.validity
    assert lifetime is not None, f"profile {prof.name} has no validity"
    not_after = now + lifetime
    if not_after_at_most is not None:
        not_after = min(not_after, not_after_at_most)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
        .public_key(public_key).serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(not_after)
    )  # fmt: skip
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if prof.is_ca is not None:
        constraints = x509.BasicConstraints(
            ca=prof.is_ca, path_length=prof.path_length if prof.is_ca else None
        )
        builder = builder.add_extension(constraints, critical=True)
    if prof.key_usage:
        flags = {name: name in prof.key_usage for name in KEY_USAGES}
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    if prof.extended_key_usage:
        usages = [EXTENDED[u] for u in prof.extended_key_usage]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if prof.subject_key_identifier:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    return builder.sign(signer, hashes.SHA256())


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
    key = new_key()
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
    ca = load_certificates(ca_cert_pem)[0]
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "the CA key must be EC (as vnode certs ca makes)"
    key = new_key()
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    cert = build(
        profiles.profile("issued-client"),
        x509.Name(attrs),
        key.public_key(),
        issuer=ca.subject,
        signer=ca_key,
        validity=validity,
        not_after_at_most=ca.not_valid_after_utc,
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def new_ca(common_name: str, validity: dt.timedelta) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) of a self-signed CA (``vnode certs ca``)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = build(profiles.profile("client-ca"), name, key.public_key(), signer=key, validity=validity)
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
