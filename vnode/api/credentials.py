"""The local API's credentials: its bearer token, and the ``vnode-local`` kubeconfig written for
the port it got (a self-signed serving certificate is its own CA; otherwise TLS is not verified
and the token gates every request)."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

import yaml

from vnode.security.files import write_file
from vnode.security.keys import is_self_signed

CONTEXT = "vnode-local"


def ensure_token(path: Path) -> str:
    """The bearer token kept in ``path`` (0600), generated when missing or unreadable."""
    try:
        token = path.read_text().strip()
        if len(token) >= 32 and path.stat().st_mode & 0o077 == 0:
            return token
    except OSError:
        pass
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(path, token.encode() + b"\n")
    return token


def kubeconfig(server: str, cert_pem: str, token: str) -> dict[str, Any]:
    """The ``vnode-local`` kubeconfig: a self-signed serving cert is its own CA, otherwise no verify."""
    cluster: dict[str, Any] = {"server": server}
    if is_self_signed(cert_pem):
        cluster["certificate-authority-data"] = base64.b64encode(cert_pem.encode()).decode()
    else:
        cluster["insecure-skip-tls-verify"] = True
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": CONTEXT, "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT}}],
        "current-context": CONTEXT,
    }


def server_url(address: str, port: int) -> str:
    """The URL a local client uses: a wildcard bind is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def write_kubeconfig(path: Path, server: str, cert_pem: str, token: str) -> None:
    header = b"# Written by vnode at start: its read-only local API (see vnode.api.local).\n"
    write_file(path, header + yaml.safe_dump(kubeconfig(server, cert_pem, token), sort_keys=False).encode())
