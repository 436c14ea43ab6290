"""The node's local client CA and the operator's admin (break-glass) client certificate.

With anonymous access off (the default), a node needs some credential its operator can use on
site, even standalone or with the control plane out of reach. At first start vnode creates, under
``<root-dir>/pki``:

- ``local-ca.crt`` / ``local-ca.key`` (0600): a CA that exists only on this node, with the unique
  subject ``CN=vnode-local-ca:<node>:<random>``; the kubelet API and the local API always trust it
  for client certificates, beside ``--client-ca-file``;
- ``admin.crt`` / ``admin.key`` (0600): a client certificate from that CA, ``CN=vnode:admin``,
  ``O=vnode:break-glass``, for ``curl --cert/--key`` (re-issued a month before it expires).

**Break-glass rule** (``is_break_glass``): a client certificate is break-glass when the TLS
handshake verified it, its *issuer* is the local CA's subject (so it was signed directly by the
local CA: the subject carries a random part no other CA has), and its subject has the
organization ``vnode:break-glass``. Such a request is authorized locally for everything, without
any webhook, so the operator keeps access while the control plane is unreachable. ``vnode certs``
issues further break-glass certificates by signing with ``local-ca.key`` and setting that
organization. A certificate from the cluster's client CA never counts, whatever its organization.

Key generation needs ``cryptography`` (~10 MiB resident), so, as in ``vnode.security.tls``, it runs
in a short-lived child process (``python -m vnode.security.localca``) and only when a file is
missing or the admin certificate is near its end (read from a small stamp file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnode import errors
from vnode.security import profiles
from vnode.security.files import write_file

BREAK_GLASS_GROUP = "vnode:break-glass"
ADMIN_USER = "vnode:admin"
BREAK_GLASS = profiles.profile("break-glass")
assert BREAK_GLASS.validity is not None and BREAK_GLASS.renew_before is not None
ADMIN_VALIDITY = BREAK_GLASS.validity
RENEW_BEFORE = BREAK_GLASS.renew_before


@dataclass(frozen=True)
class LocalPki:
    """Where the local CA and the admin pair live (under the node's pki dir)."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "local-ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "local-ca.key"

    @property
    def admin_cert(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def stamp(self) -> Path:
        return self.dir / "local-ca.json"


def _stamp_ok(pki: LocalPki) -> bool:
    try:
        record = json.loads(pki.stamp.read_text())
        not_after = float(record["adminNotAfter"])
        str(record["caCommonName"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    files = (pki.ca_cert, pki.ca_key, pki.admin_cert, pki.admin_key)
    return all(f.exists() for f in files) and not_after - time.time() > RENEW_BEFORE.total_seconds()


def ensure_local_pki(pki: LocalPki, node_name: str) -> None:
    """Create what is missing or expiring, in a child process; a ConfigError if that fails."""
    if _stamp_ok(pki):
        return
    command = [sys.executable, "-m", "vnode.security.localca", str(pki.dir), node_name]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise errors.ConfigError(
            "rootDir", f"creating the local client CA in {pki.dir}: {result.stderr.strip()}"
        )


def generate(pki: LocalPki, node_name: str) -> None:
    """The child process's work: a CA if none, and an admin certificate if missing or expiring."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from vnode.security import keys

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    pki.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    if not (pki.ca_cert.exists() and pki.ca_key.exists()):
        ca_key = keys.new_key()
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"vnode-local-ca:{node_name}:{secrets.token_hex(8)}")]
        )
        ca = keys.build(profiles.profile("local-ca"), name, ca_key.public_key(), signer=ca_key)
        write_file(pki.ca_key, key_pem(ca_key), 0o600)
        write_file(pki.ca_cert, ca.public_bytes(serialization.Encoding.PEM), 0o644)
        for stale in (pki.admin_cert, pki.admin_key):  # issued by a CA that is gone
            stale.unlink(missing_ok=True)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    signer = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    not_after = now + ADMIN_VALIDITY
    if pki.admin_cert.exists() and pki.admin_key.exists():
        current = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())
        if current.issuer == ca.subject and current.not_valid_after_utc - now > RENEW_BEFORE:
            _write_stamp(pki, ca, current.not_valid_after_utc)
            return
    key = keys.new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, BREAK_GLASS_GROUP),
            x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_USER),
        ]
    )
    cert = keys.build(BREAK_GLASS, subject, key.public_key(), issuer=ca.subject, signer=signer)
    write_file(pki.admin_key, key_pem(key), 0o600)
    write_file(pki.admin_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_stamp(pki, ca, not_after)


def _write_stamp(pki: LocalPki, ca: Any, admin_not_after: dt.datetime) -> None:
    """What the agent needs without ``cryptography``: the CA's name and the admin cert's end."""
    from cryptography.x509.oid import NameOID

    (cn,) = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    record = {"caCommonName": cn.value, "adminNotAfter": admin_not_after.timestamp()}
    write_file(pki.stamp, json.dumps(record).encode(), 0o644)


def local_ca_name(pki: LocalPki) -> str:
    """The local CA's common name, as recorded by ``ensure_local_pki``."""
    try:
        return str(json.loads(pki.stamp.read_text())["caCommonName"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise errors.ConfigError("rootDir", f"cannot read {pki.stamp}: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vnode.security.localca")
    parser.add_argument("dir", type=Path)
    parser.add_argument("node_name")
    args = parser.parse_args(argv)
    generate(LocalPki(args.dir), args.node_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
