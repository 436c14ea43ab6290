"""The kubelet API's serving certificate: the configured pair, or a self-signed one like kubelet's.

When no ``--tls-cert-file``/``--tls-private-key-file`` is given, kubelet generates a self-signed
certificate for its hostname and IPs and keeps it under its root dir; vnode does the same (an EC
P-256 key, one year of validity). An existing pair is reused as long as it is valid for at least a
day more and names every requested host and IP, so restarts keep the same certificate.

The X.509 code (``cryptography``) costs about 10 MiB of resident memory once imported, for a job
done once a year; so the agent checks a small stamp file written beside the certificate and runs
the check-and-generate step in a short-lived child process (``python -m vnode.security.tls``)
only when the stamp does not match.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import logging
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vnode import errors
from vnode.security import profiles
from vnode.security.files import write_file

log = logging.getLogger(__name__)

SERVING = profiles.profile("self-signed-serving")
assert SERVING.renew_before is not None
RENEW_BEFORE = SERVING.renew_before


def _covers(cert_path: Path, hostnames: Sequence[str], ips: Sequence[str]) -> bool:
    from cryptography import x509

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
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from vnode.security import keys

    if cert_path.exists() and key_path.exists() and _covers(cert_path, hostnames, ips):
        _write_stamp(cert_path, hostnames, ips)
        return False
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = keys.new_key()
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{hostnames[0]}@{int(now.timestamp())}")])
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    san += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = keys.build(SERVING, subject, key.public_key(), signer=key, sans=san)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_file(key_path, key_bytes, 0o600)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_stamp(cert_path, hostnames, ips)
    log.info("wrote a self-signed serving certificate %s for %s", cert_path, ", ".join([*hostnames, *ips]))
    return True


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


def _stamp_path(cert_path: Path) -> Path:
    return cert_path.with_name(cert_path.name + ".names")


def _stamp(hostnames: Sequence[str], ips: Sequence[str]) -> dict[str, object]:
    return {"hostnames": sorted(hostnames), "ips": sorted(str(ipaddress.ip_address(i)) for i in ips)}


def _write_stamp(cert_path: Path, hostnames: Sequence[str], ips: Sequence[str]) -> None:
    record = {**_stamp(hostnames, ips), "checked": time.time()}
    write_file(_stamp_path(cert_path), json.dumps(record).encode(), 0o644)


def ensure_serving_pair(
    cert_path: Path, key_path: Path, *, hostnames: Sequence[str], ips: Sequence[str]
) -> None:
    """``ensure_self_signed`` in a child process, unless a stamp checked within a day matches."""
    try:
        record = json.loads(_stamp_path(cert_path).read_text())
        fresh = time.time() - float(record.pop("checked")) < RENEW_BEFORE.total_seconds()
        if fresh and record == _stamp(hostnames, ips) and cert_path.exists() and key_path.exists():
            return
    except (OSError, ValueError, KeyError, TypeError):
        pass
    command = [sys.executable, "-m", "vnode.security.tls", str(cert_path), str(key_path)]
    command += [f"--hostname={h}" for h in hostnames] + [f"--ip={i}" for i in ips]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise errors.ConfigError("server.tlsCertFile", f"generating {cert_path}: {result.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnode.security.tls")
    parser.add_argument("cert", type=Path)
    parser.add_argument("key", type=Path)
    parser.add_argument("--hostname", action="append", default=[])
    parser.add_argument("--ip", action="append", default=[])
    args = parser.parse_args(argv)
    ensure_self_signed(args.cert, args.key, hostnames=args.hostname, ips=args.ip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
