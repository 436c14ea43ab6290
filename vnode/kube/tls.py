"""kubelet's TLS flag values: ``--tls-min-version`` names and the ``--tls-cipher-suites`` Go names
vnode accepts (ECDHE key exchange with AEAD ciphers), with their OpenSSL names."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

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
