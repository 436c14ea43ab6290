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
from vnode.kube.tls import DEFAULT_SUITES, MIN_VERSIONS, TLS12_SUITES


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
