"""The serving TLS policy: versions, cipher suites and the client CAs (x509 authentication).

TLS 1.2 is the floor (``--tls-min-version=VersionTLS12``, or ``VersionTLS13``); TLS 1.2 suites
are limited to ECDHE key exchange with AEAD ciphers (``--tls-cipher-suites`` takes kubelet's Go
names, and only those; TLS 1.3 suites are always the library's AEAD set and can't be narrowed,
as in Go). Client certificates are requested (``CERT_OPTIONAL``) and verified by OpenSSL against
the configured ``--client-ca-file`` plus the node's local CA (``vnode.security.localca``), so a
certificate from any other CA fails the handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from vnode import errors

MIN_VERSIONS = {"VersionTLS12": ssl.TLSVersion.TLSv1_2, "VersionTLS13": ssl.TLSVersion.TLSv1_3}
TLS12_SUITES = {  # Go name -> OpenSSL name: ECDHE + AEAD only
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
DEFAULT_SUITES = tuple(dict.fromkeys(TLS12_SUITES.values()))


def parse_min_version(value: str) -> str:
    """Checks a ``--tls-min-version`` value; ValueError names the accepted ones."""
    if value not in MIN_VERSIONS:
        raise ValueError(
            f"must be one of {', '.join(MIN_VERSIONS)} (TLS 1.0 and 1.1 are refused), got {value!r}"
        )
    return value


def parse_cipher_suites(names: Sequence[str]) -> tuple[str, ...]:
    """Checks ``--tls-cipher-suites`` names; ValueError for unknown or non-modern ones."""
    for name in names:
        if name not in TLS12_SUITES and name not in TLS13_SUITES:
            accepted = ", ".join([*TLS12_SUITES, *TLS13_SUITES])
            raise ValueError(f"{name!r} is not a modern cipher suite vnode accepts ({accepted})")
    return tuple(names)


def apply(
    context: ssl.SSLContext,
    *,
    min_version: str = "VersionTLS12",
    cipher_suites: Sequence[str] = (),
    client_cas: Sequence[Path] = (),
) -> ssl.SSLContext:
    """Set the versions, suites and client CAs on a server context; ConfigError names the field."""
    context.minimum_version = MIN_VERSIONS[min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    chosen = [TLS12_SUITES[n] for n in cipher_suites if n in TLS12_SUITES] or list(DEFAULT_SUITES)
    if cipher_suites and not any(n in TLS12_SUITES for n in cipher_suites) and min_version == "VersionTLS12":
        raise errors.ConfigError(
            "server.tlsCipherSuites", "name at least one TLS 1.2 suite, or set VersionTLS13"
        )
    context.set_ciphers(":".join(dict.fromkeys(chosen)))
    for ca in client_cas:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise errors.ConfigError("auth.clientCAFile", f"cannot load {ca}: {exc}") from exc
    if client_cas:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
