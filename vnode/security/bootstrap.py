"""``vnode join``: token discovery, CA pinning and TLS bootstrap, as kubeadm join and kubelet do.

1. Discovery: GET ``kube-public/cluster-info`` without verifying TLS and without credentials,
   until it carries ``jws-kubeconfig-<token id>`` (the bootstrap signer adds it for a valid token);
   check that detached JWS (HS256 keyed by the token secret) over the ``kubeconfig`` string; pin
   the CA by the SHA-256 of its SubjectPublicKeyInfo (``--discovery-token-ca-cert-hash``); fetch
   cluster-info again with that CA verified and require the same bytes.
2. TLS bootstrap: a client CSR (signer ``kube-apiserver-client-kubelet``, CN ``system:node:<name>``,
   O ``system:nodes``, no SANs) created with the bootstrap token as bearer, then waited for until
   approved and issued.
3. Only then is anything written: ``<pki>/kubelet-client-<time>.pem`` (certificate and key, 0600)
   with the symlink ``kubelet-client-current.pem``, and a kubeconfig (0600) with every master as a
   cluster and context of one user whose certificate and key are that symlink, the form
   ``vnode.clients.kubeconfig`` reads as one multi-master cluster. A refusal writes nothing.

The same CSR request/wait serves rotation (``vnode.security.rotation``). The X.509 steps run in a
child process (``vnode.security.keys``), so the node never loads ``cryptography``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from vnode import errors
from vnode.clients.kubeconfig import ClusterAccess
from vnode.clients.masters import Masters
from vnode.config.settings import Settings
from vnode.security import profiles
from vnode.security.files import write_file

log = logging.getLogger(__name__)

TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
PIN = re.compile(r"^sha256:([0-9a-f]{64})$")
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
CLIENT_SIGNER = profiles.profile("kubelet-client-csr").signer
SERVING_SIGNER = profiles.profile("kubelet-serving-csr").signer
CLIENT_USAGES = list(profiles.profile("kubelet-client-csr").usages)  # EC keys: no key encipherment
SERVING_USAGES = list(profiles.profile("kubelet-serving-csr").usages)
DISCOVERY_RETRY = 1.0
CSR_TIMEOUT = 15 * 60.0  # client-go's certificate manager waits this long for a CSR


@dataclass(frozen=True)
class JoinRequest:
    servers: tuple[str, ...]
    token_id: str
    token_secret: str
    ca_hashes: tuple[str, ...]  # normalised: lowercase ``sha256:<hex>``
    unsafe_skip_ca_verification: bool
    node_name: str
    kubeconfig: Path
    pki_dir: Path
    discovery_timeout: float = 300.0
    csr_timeout: float = CSR_TIMEOUT


def parse_token(text: str) -> tuple[str, str]:
    match = TOKEN.match(text.strip())
    if match is None:
        raise errors.ConfigError("--token", "expected <id>.<secret> matching [a-z0-9]{6}.[a-z0-9]{16}")
    return match.group(1), match.group(2)


def parse_pins(values: list[str]) -> tuple[str, ...]:
    """``sha256:<hex>`` pins; the prefix is case-insensitive and the hex compared lowercase."""
    pins = []
    for value in values:
        for item in (v.strip() for v in value.split(",") if v.strip()):
            prefix, _, digest = item.partition(":")
            normal = f"{prefix.lower()}:{digest.lower()}"
            if PIN.match(normal) is None:
                raise errors.ConfigError(
                    "--discovery-token-ca-cert-hash", f"{item!r} is not sha256:<64 hex digits>"
                )
            pins.append(normal)
    return tuple(pins)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def detached_signature(payload: str, token_id: str, token_secret: str | bytes) -> str:
    """The detached compact JWS cluster-bootstrap computes: a header with the keys in sorted
    order, no spaces, base64url without padding, and an empty payload section."""
    key = token_secret.encode() if isinstance(token_secret, str) else token_secret
    header = _b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":")).encode())
    signing_input = f"{header}.{_b64url(payload.encode())}".encode()
    return f"{header}..{_b64url(hmac.new(key, signing_input, hashlib.sha256).digest())}"


def signature_valid(payload: str, signature: str, token_id: str, token_secret: str) -> bool:
    """kubeadm's check: recompute and compare the strings (in constant time)."""
    return hmac.compare_digest(detached_signature(payload, token_id, token_secret), signature)


async def keys_helper(op: str, request: dict[str, Any]) -> dict[str, Any]:
    """Run ``vnode.security.keys OP`` in a child process; its ``error`` becomes ``InvalidInput``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vnode.security.keys", op,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(json.dumps(request).encode())
    if proc.returncode != 0:
        raise errors.RuntimeFailure(f"vnode.security.keys {op} failed: {err.decode().strip()[-500:]}")
    answer: dict[str, Any] = json.loads(out)
    if "error" in answer:
        raise errors.InvalidInput(f"{op}: {answer['error']}")
    return answer


# -- discovery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterInfo:
    kubeconfig: str  # the exact string that was signed
    ca_pem: bytes
    server: str


def _parse_cluster_info(text: str, where: str) -> dict[str, str]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise errors.Unavailable(f"{where}: cluster-info is not JSON: {exc}") from exc
    data = body.get("data") if isinstance(body, dict) else None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _kubeconfig_ca(kubeconfig: str, where: str) -> tuple[bytes, str]:
    try:
        config = yaml.safe_load(kubeconfig)
        cluster = config["clusters"][0]["cluster"]
        return base64.b64decode(cluster["certificate-authority-data"]), str(cluster.get("server", ""))
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise errors.JoinRefused(
            f"{where}: cluster-info's kubeconfig has no usable cluster CA: {exc!r}"
        ) from exc


async def _get_cluster_info(session: aiohttp.ClientSession, server: str) -> dict[str, str]:
    async with session.get(server + CLUSTER_INFO, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise errors.Unavailable(f"{server}: GET cluster-info: {resp.status} {text[:200]}")
        return _parse_cluster_info(text, server)


async def discover(req: JoinRequest) -> tuple[str, ClusterInfo]:
    """(the server that answered, the verified cluster-info); ``JoinRefused`` when it can't be
    trusted, after ``discovery_timeout`` when no master shows a signature for this token."""
    key = f"jws-kubeconfig-{req.token_id}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + req.discovery_timeout
    problems: dict[str, str] = {}
    insecure = aiohttp.TCPConnector(ssl=False)
    async with aiohttp.ClientSession(connector=insecure) as session:
        while True:
            for server in req.servers:
                try:
                    data = await _get_cluster_info(session, server)
                except (aiohttp.ClientError, TimeoutError, errors.Unavailable) as exc:
                    problems[server] = str(exc) or type(exc).__name__
                    continue
                if "kubeconfig" not in data:
                    problems[server] = "cluster-info has no kubeconfig"
                elif key not in data:
                    problems[server] = f"cluster-info has no signature for token id {req.token_id!r}"
                else:
                    return server, await _trust(req, server, data["kubeconfig"], data[key])
            if loop.time() >= deadline:
                detail = "; ".join(f"{s}: {p}" for s, p in problems.items())
                raise errors.JoinRefused(
                    f"no master offered cluster-info signed for token id {req.token_id!r} within "
                    f"{req.discovery_timeout:g}s: the token is unknown, expired or not for signing ({detail})"
                )
            log.info("waiting for cluster-info to be signed for token id %s", req.token_id)
            await asyncio.sleep(DISCOVERY_RETRY)


async def _trust(req: JoinRequest, server: str, kubeconfig: str, signature: str) -> ClusterInfo:
    if not signature_valid(kubeconfig, signature, req.token_id, req.token_secret):
        raise errors.JoinRefused(
            f"{server}: cluster-info's signature for token id {req.token_id!r} does not match the "
            "token's secret: the token is wrong"
        )
    ca_pem, cluster_server = _kubeconfig_ca(kubeconfig, server)
    if not req.unsafe_skip_ca_verification:
        try:
            found = (await keys_helper("pins", {"pem": ca_pem.decode()}))["pins"]
        except errors.InvalidInput as exc:
            raise errors.JoinRefused(f"{server}: cluster-info's CA can't be read: {exc}") from exc
        if not set(found) & set(req.ca_hashes):
            raise errors.JoinRefused(
                f"{server}: the cluster CA's public key pin is {', '.join(found)}, which matches no "
                "--discovery-token-ca-cert-hash: this is not the cluster you pinned"
            )
    context = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            again = await _get_cluster_info(session, server)
    except (aiohttp.ClientError, TimeoutError, errors.Unavailable) as exc:
        raise errors.JoinRefused(
            f"{server}: cluster-info fetched with its CA verified failed: {exc}"
        ) from exc
    if again.get("kubeconfig") != kubeconfig:
        raise errors.JoinRefused(
            f"{server}: cluster-info changed between the insecure and the verified fetch"
        )
    return ClusterInfo(kubeconfig, ca_pem, cluster_server)


# -- CSRs (join and rotation) ---------------------------------------------------------------


async def create_csr(
    masters: Masters,
    csr_pem: str,
    signer: str,
    usages: list[str],
    *,
    prefix: str,
    expiration_seconds: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "request": base64.b64encode(csr_pem.encode()).decode(),
        "signerName": signer,
        "usages": usages,
    }
    if expiration_seconds is not None:
        spec["expirationSeconds"] = expiration_seconds
    body = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": prefix},
        "spec": spec,
    }
    created: dict[str, Any] = await masters.request("POST", CSRS, body=body)
    return created


def issued(csr: dict[str, Any]) -> bytes | None:
    """The certificate of an issued CSR; ``JoinRefused`` if it was denied or failed."""
    status = csr.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("Denied", "Failed") and condition.get("status", "True") == "True":
            raise errors.JoinRefused(
                f"CSR {csr['metadata']['name']} {condition['type'].lower()}: "
                f"{condition.get('reason', '')} {condition.get('message', '')}".strip()
            )
    certificate = status.get("certificate")
    return base64.b64decode(certificate) if certificate else None


async def wait_issued(masters: Masters, name: str, timeout: float) -> bytes:
    """The CSR's certificate once issued: get, then watch it from there (re-get on a break)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                csr = await masters.request("GET", f"{CSRS}/{name}")
                pem = issued(csr)
                if pem is not None:
                    return pem
                params = {
                    "fieldSelector": f"metadata.name={name}",
                    "resourceVersion": csr["metadata"]["resourceVersion"],
                    "timeoutSeconds": "300",
                }
                async for event in masters.watch(CSRS, params):
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        pem = issued(event["object"])
                        if pem is not None:
                            return pem
                    elif event.get("type") == "DELETED":
                        raise errors.JoinRefused(f"CSR {name} was deleted before it was issued")
            except errors.Unavailable as exc:
                log.warning("waiting for CSR %s: %s", name, exc)
                await asyncio.sleep(DISCOVERY_RETRY)
            except errors.Expired:  # the watch's version is too old: get again
                continue


CLUSTER_CA = "ca.crt"  # the pinned cluster CA, kept beside the client certificate

# -- files ---------------------------------------------------------------------------------


def install_pair(pki_dir: Path, kind: str, cert_pem: bytes, key_pem: bytes) -> Path:
    """kubelet's layout: ``kubelet-<kind>-<time>.pem`` (certificate then key, 0600) and the
    symlink ``kubelet-<kind>-current.pem`` switched to it atomically; returns the symlink."""
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
    target = pki_dir / f"kubelet-{kind}-{stamp}.pem"
    write_file(target, cert_pem.rstrip(b"\n") + b"\n" + key_pem)
    current = pki_dir / f"kubelet-{kind}-current.pem"
    link = pki_dir / f".{current.name}.{os.getpid()}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(target.name)
    os.replace(link, current)
    for old in sorted(pki_dir.glob(f"kubelet-{kind}-2*.pem"))[:-2]:  # keep the previous one too
        old.unlink(missing_ok=True)
    return current


def kubeconfig_text(servers: tuple[str, ...], ca_pem: bytes, client_pem: Path) -> str:
    """One user (the node) with a cluster and a context per master, the current one first."""
    ca = base64.b64encode(ca_pem).decode()
    names = [f"master-{i}" for i in range(len(servers))]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": n, "cluster": {"server": s, "certificate-authority-data": ca}}
            for n, s in zip(names, servers, strict=True)
        ],
        "users": [
            {"name": "node", "user": {"client-certificate": str(client_pem), "client-key": str(client_pem)}}
        ],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "node"}} for n in names],
        "current-context": names[0],
    }
    return yaml.safe_dump(config, sort_keys=False)


# -- the join itself -------------------------------------------------------------------------


async def join(req: JoinRequest) -> float:
    """Discover, bootstrap and write the kubeconfig; the seconds it took. ``JoinRefused``
    (nothing written) when the cluster can't be trusted or doesn't let the node in."""
    started = time.monotonic()
    server, info = await discover(req)
    log.info("cluster-info from %s verified (CA %s)", server, "pinned" if req.ca_hashes else "NOT pinned")
    if req.unsafe_skip_ca_verification and not req.ca_hashes:
        log.warning("the cluster CA was not pinned (--discovery-token-unsafe-skip-ca-verification)")
    context = ssl.create_default_context(cadata=info.ca_pem.decode())
    token = f"{req.token_id}.{req.token_secret}"
    masters = Masters(ClusterAccess(req.servers, context, token=token))
    try:
        subject = f"system:node:{req.node_name}"
        made = await keys_helper("csr", {"cn": subject, "o": ["system:nodes"]})
        try:
            csr = await create_csr(masters, made["csr"], CLIENT_SIGNER, CLIENT_USAGES, prefix="node-csr-")
        except errors.Unavailable as exc:
            if "not allowed" in str(exc):
                raise errors.JoinRefused(f"the bootstrap token was not accepted: {exc}") from exc
            raise
        name = csr["metadata"]["name"]
        log.info("client CSR %s created for %s; waiting for it to be approved and issued", name, subject)
        try:
            cert = await wait_issued(masters, name, req.csr_timeout)
        except TimeoutError as exc:
            raise errors.JoinRefused(f"CSR {name} was not issued within {req.csr_timeout:g}s") from exc
    finally:
        await masters.close()
    current = install_pair(req.pki_dir, "client", cert, made["key"].encode())
    write_file(req.kubeconfig, kubeconfig_text(req.servers, info.ca_pem, current).encode())
    write_file(req.pki_dir / CLUSTER_CA, info.ca_pem)
    took = time.monotonic() - started
    log.info("joined: client certificate %s, kubeconfig %s (%.2fs)", current, req.kubeconfig, took)
    return took


async def client_certificate_valid(kubeconfig: Path, pki_dir: Path) -> bool:
    """Whether an earlier join left a kubeconfig and a client certificate still valid for a
    minute: then ``vnode join`` starts the node without bootstrapping again."""
    current = pki_dir / "kubelet-client-current.pem"
    try:
        if not kubeconfig.exists():  # noqa: ASYNC240 - one stat, before the node runs
            return False
        pem = current.read_text()
    except OSError:
        return False
    try:
        facts = await keys_helper("describe", {"pem": pem})
    except (errors.InvalidInput, OSError):
        return False
    return float(facts["notAfter"]) - time.time() > 60


def join_command(args: argparse.Namespace, settings: Settings) -> Settings:
    """Bootstrap unless an earlier join left a valid client certificate; the settings to run
    the joined node with (its kubeconfig; client certificate rotation on, as kubeadm sets it)."""
    import dataclasses

    from vnode.config.values import parse_duration

    token_id, token_secret = parse_token(args.token)
    pins = parse_pins(args.discovery_token_ca_cert_hash)
    if not pins and not args.discovery_token_unsafe_skip_ca_verification:
        raise errors.ConfigError(
            "--discovery-token-ca-cert-hash",
            "required (or --discovery-token-unsafe-skip-ca-verification, which trusts any CA)",
        )
    servers = tuple(s.strip().rstrip("/") for s in args.servers.split(",") if s.strip())
    if not servers or not all(s.startswith("https://") for s in servers):
        raise errors.ConfigError("servers", f"{args.servers!r}: expected https:// URLs, comma-separated")
    try:
        timeout = parse_duration(args.discovery_timeout)
    except Exception as exc:
        raise errors.ConfigError("--discovery-timeout", str(exc)) from exc
    kubeconfig = settings.cluster.kubeconfig or settings.root_dir / "kubelet.conf"
    request = JoinRequest(
        servers, token_id, token_secret, pins, args.discovery_token_unsafe_skip_ca_verification,
        settings.node.name, kubeconfig, settings.pki_dir, discovery_timeout=timeout,
    )  # fmt: skip
    if asyncio.run(client_certificate_valid(kubeconfig, settings.pki_dir)):
        log.info("%s holds a valid client certificate: not joining again", kubeconfig)
    else:
        asyncio.run(join(request))
    cluster = dataclasses.replace(
        settings.cluster, kubeconfig=kubeconfig, master=None, rotate_certificates=True
    )
    auth = settings.auth
    cluster_ca = settings.pki_dir / CLUSTER_CA
    if auth.client_ca_file is None and cluster_ca.exists():
        # as kubeadm configures a kubelet: the API server's client certificate (kubelet proxy,
        # logs, exec) is issued by the cluster CA this join pinned
        auth = dataclasses.replace(auth, client_ca_file=cluster_ca)
    return dataclasses.replace(settings, cluster=cluster, auth=auth)
