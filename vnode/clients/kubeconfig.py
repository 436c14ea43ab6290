"""How to reach the control plane: ``--master`` URLs and/or a kubeconfig, as one ``ClusterAccess``.

vnode reads kubeconfig files itself (current context -> cluster server and CA, user client
certificate, key or bearer token, inline ``*-data`` or file paths) instead of through
kubernetes_asyncio: importing that package's config loader costs about 62 MiB of resident memory,
more than the agent's whole budget.

Several masters, two ways. In a kubeconfig, the masters are the servers of every cluster entry
named by a context whose ``user`` is the current context's user: the current context's cluster
first, then the others in file order, duplicates dropped. The node's credentials are valid on
every master of its cluster, so one user with a context per master lists them all; clusters of
other users in a shared kubeconfig are left out. Every such cluster's CA is trusted by the one TLS
context, and their ``insecure-skip-tls-verify`` must agree. Or ``--master`` takes a
comma-separated list and, given together with ``--kubeconfig``, replaces those servers while
keeping the kubeconfig's credentials and CAs.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from vnode import errors


@dataclass(frozen=True)
class ClusterAccess:
    servers: tuple[str, ...]
    ssl_context: ssl.SSLContext | None  # None for plain http:// masters
    token: str | None = None
    ca_hash: str | None = None  # sha256 of the cluster's CA certificates: the cluster's identity

    def identity(self, node_name: str) -> dict[str, str | None]:
        """What the offline cache is tagged with: a cache of another cluster or node is refused."""
        return {"caHash": self.ca_hash, "node": node_name}


def _split_masters(value: str) -> tuple[str, ...]:
    servers = tuple(s.strip().rstrip("/") for s in value.split(",") if s.strip())
    for server in servers:
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.ConfigError("--master", f"{server!r} is not an http:// or https:// URL")
    if not servers:
        raise errors.ConfigError("--master", "no master URL given")
    return servers


def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get(what)
            if isinstance(value, dict):
                return value
    raise errors.ConfigError("--kubeconfig", f"{path}: no {what} named {name!r}")


def _material(entry: dict[str, Any], key: str, base: Path, scratch: Path) -> Path | None:
    """A PEM file for ``key`` (a path relative to the kubeconfig) or ``key-data`` (inline)."""
    if entry.get(f"{key}-data"):
        target = scratch / key
        target.write_bytes(base64.b64decode(entry[f"{key}-data"]))
        target.chmod(0o600)
        return target
    if entry.get(key):
        path = Path(entry[key])
        return path if path.is_absolute() else base / path
    return None


def _clusters(data: dict[str, Any], context: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """The current context's cluster, then those of the other contexts of its user, in file order."""
    names = [str(context.get("cluster"))]
    user = context.get("user")
    if user:
        for item in data.get("contexts") or []:
            other = item.get("context") if isinstance(item, dict) else None
            if isinstance(other, dict) and other.get("user") == user and other.get("cluster"):
                names.append(str(other["cluster"]))
    return {name: _named(data.get("clusters"), name, "cluster", path) for name in dict.fromkeys(names)}


def _servers(clusters: dict[str, dict[str, Any]], path: Path) -> tuple[str, ...]:
    """The clusters' servers, duplicates dropped."""
    servers: list[str] = []
    for name, cluster in clusters.items():
        server = str(cluster.get("server") or "").strip().rstrip("/")
        parts = urlsplit(server)
        if not server:
            raise errors.ConfigError("--kubeconfig", f"{path}: cluster {name!r} has no server")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.ConfigError(
                "--kubeconfig", f"{path}: cluster {name!r}: {server!r} is not an http:// or https:// URL"
            )
        servers.append(server)
    return tuple(dict.fromkeys(servers))


def _cas(clusters: list[dict[str, Any]], base: Path, scratch: Path) -> list[Path]:
    """One PEM file per distinct CA (by content) of ``clusters``, in their order."""
    found: dict[bytes, Path] = {}
    for number, cluster in enumerate(clusters):
        (scratch / f"ca{number}").mkdir()
        path = _material(cluster, "certificate-authority", base, scratch / f"ca{number}")
        if path is not None:
            found.setdefault(path.read_bytes(), path)
    return list(found.values())


def load_access(kubeconfig: Path | None, masters: str | None) -> ClusterAccess:
    """The access for this node; ``ConfigError`` naming the file and the problem otherwise."""
    if kubeconfig is None:
        if masters is None:
            raise errors.ConfigError("--master", "neither --master nor --kubeconfig is given")
        servers = _split_masters(masters)
        tls = ssl.create_default_context() if any(s.startswith("https") for s in servers) else None
        return ClusterAccess(servers, tls)
    try:
        data = yaml.safe_load(kubeconfig.read_text())
    except OSError as exc:
        raise errors.ConfigError("--kubeconfig", f"{kubeconfig}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise errors.ConfigError("--kubeconfig", f"{kubeconfig}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not data.get("current-context"):
        raise errors.ConfigError("--kubeconfig", f"{kubeconfig}: no current-context")
    context = _named(data.get("contexts"), data["current-context"], "context", kubeconfig)
    clusters = _clusters(data, context, kubeconfig)
    user = (
        _named(data.get("users"), str(context.get("user")), "user", kubeconfig) if context.get("user") else {}
    )
    servers = _split_masters(masters) if masters is not None else _servers(clusters, kubeconfig)
    insecure = {bool(cluster.get("insecure-skip-tls-verify")) for cluster in clusters.values()}
    if len(insecure) > 1:
        raise errors.ConfigError(
            "--kubeconfig",
            f"{kubeconfig}: the clusters of user {context.get('user')!r} disagree on "
            "insecure-skip-tls-verify (one TLS setup serves all their masters)",
        )
    base = kubeconfig.resolve().parent
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token_file = Path(user["tokenFile"])
        try:
            token = (token_file if token_file.is_absolute() else base / token_file).read_text().strip()
        except OSError as exc:
            raise errors.ConfigError("--kubeconfig", f"{kubeconfig}: tokenFile: {exc.strerror}") from exc
    if not any(s.startswith("https") for s in servers):
        return ClusterAccess(servers, None, token)
    scratch = Path(tempfile.mkdtemp(prefix="vnode-kubeconfig-"))
    try:
        ssl_context = ssl.create_default_context()
        if insecure == {True}:
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        cas = _cas(list(clusters.values()), base, scratch)
        for ca in cas:
            ssl_context.load_verify_locations(cafile=str(ca))
        ca_hash = hashlib.sha256(b"".join(sorted(ca.read_bytes() for ca in cas))).hexdigest() if cas else None
        cert = _material(user, "client-certificate", base, scratch)
        key = _material(user, "client-key", base, scratch)
        if cert is not None:
            ssl_context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise errors.ConfigError(
            "--kubeconfig", f"{kubeconfig}: cannot load its certificates: {exc}"
        ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # inline key material lives only in memory
    return ClusterAccess(servers, ssl_context, token, ca_hash)
