"""The test control plane's TLS-bootstrap pieces: what ``vnode join`` and certificate rotation need.

kube-apiserver and kube-controller-manager split this work; here one module does it for a master
of the test control plane (``integration.controlplane``), with the same semantics:

- **bootstrap tokens**: a bearer ``<id>.<secret>`` matching the Secret ``kube-system/bootstrap-token-<id>``
  (type ``bootstrap.kubernetes.io/token``, ``usage-bootstrap-authentication: "true"``, not past its
  ``expiration``) authenticates as ``system:bootstrap:<id>`` in ``system:bootstrappers`` (plus its
  ``auth-extra-groups``); like the ``system:node-bootstrapper`` role it may only create, get, list
  and watch CSRs. A token-shaped bearer that matches nothing is a 401.
- **cluster-info**: ``kube-public/cluster-info`` holds a kubeconfig with the server and the CA, and
  the bootstrap signer adds ``jws-kubeconfig-<id>`` (detached JWS, HS256) for every valid token
  with ``usage-bootstrap-signing``, and removes it when the token goes. Anyone may GET it.
- **CSRs** (``certificates.k8s.io/v1``): create (``spec.username``/``groups`` set from the caller),
  get, list, watch, and the ``approval`` subresource (``kubectl certificate approve``). The approver
  approves kubelet client CSRs from bootstrappers or from the node itself (csrapproving's
  nodeclient/selfnodeclient); kubelet-serving CSRs wait for a human, as in Kubernetes. The signer
  issues approved CSRs from the cluster CA for ``min(expirationSeconds, signing duration)``.

Test knobs live in the ConfigMap ``kube-system/vnode-test-csr`` (shared by every master):
``hold: "true"`` keeps the approver from approving anything, ``approveServing: "true"`` approves
kubelet-serving CSRs too (as a third-party approver would), ``signingDuration: "<seconds>"`` is
kube-controller-manager's ``--cluster-signing-duration`` (default one year).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from integration import controlplane as cp
from integration.pki import ClusterPki

CSR = cp.Resource(
    "certificates.k8s.io", "v1", "certificatesigningrequests", "CertificateSigningRequest", False, ("csr",)
)
SECRETS = next(r for r in cp.RESOURCES if r.plural == "secrets")
CONFIGMAPS = next(r for r in cp.RESOURCES if r.plural == "configmaps")
TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
CSR_PATH = re.compile(
    r"^/apis/certificates\.k8s\.io/v1/certificatesigningrequests(?:/([^/]+)(?:/([^/]+))?)?$"
)
CLUSTER_INFO_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
RECONCILE_SECONDS = 0.2
DEFAULT_SIGNING_SECONDS = 365 * 24 * 3600
USER: web.AppKey[dict[str, Any]] = web.AppKey("bootstrap-user", dict)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def detached_jws(payload: str, token_id: str, secret: str) -> str:
    """cluster-bootstrap's ComputeDetachedSignature: HS256 keyed by the secret, payload left out."""
    header = b64url(json.dumps({"alg": "HS256", "kid": token_id}, separators=(",", ":")).encode())
    signing_input = f"{header}.{b64url(payload.encode())}".encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}..{b64url(signature)}"


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _valid_token_secret(secret: dict[str, Any], usage: str) -> dict[str, str] | None:
    """The decoded data of a usable bootstrap-token Secret for ``usage``, else None."""
    if secret.get("type") != "bootstrap.kubernetes.io/token":
        return None
    data = _decoded(secret)
    if data.get(f"usage-bootstrap-{usage}") != "true" or not data.get("token-id"):
        return None
    if secret["metadata"]["name"] != f"bootstrap-token-{data['token-id']}":
        return None
    expiration = data.get("expiration")
    if expiration and dt.datetime.fromisoformat(expiration.replace("Z", "+00:00")) < dt.datetime.now(dt.UTC):
        return None
    return data


def _peer_user(request: web.Request) -> dict[str, Any] | None:
    """The user of a verified client certificate: CN is the name, O the groups."""
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    if not peer:
        return None
    fields = [item for rdn in peer.get("subject", ()) for item in rdn]
    name = next((v for k, v in fields if k == "commonName"), "")
    groups = [v for k, v in fields if k == "organizationName"]
    return {"username": name, "groups": [*groups, "system:authenticated"]}


class Bootstrap:
    """One master's bootstrap pieces; ``install`` wires them into its app."""

    def __init__(self, plane: cp.ControlPlane, pki: ClusterPki) -> None:
        self.plane = plane
        self.pki = pki
        self.server = ""  # set once the listener is bound: the server named in cluster-info

    @property
    def store(self) -> cp.Store:
        return self.plane.store

    # -- authentication and the routes a bootstrapper or anonymous caller may use -----------------

    @web.middleware
    async def gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Placed before the control plane's ``authenticate``: bootstrap tokens, anonymous
        cluster-info, and the CSR API; every other request goes on unchanged."""
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        user = None
        match = TOKEN.match(bearer)
        if match and bearer not in request.app[cp.TOKENS]:
            user = self._token_user(match.group(1), match.group(2))
            if user is None:
                return cp.status(401, "Unauthorized", "Unauthorized: invalid bootstrap token")
        route: Any = request.match_info.handler
        if request.path == CLUSTER_INFO_PATH and request.method == "GET":
            response: web.StreamResponse = await route(request)
            return response
        csr = CSR_PATH.match(request.path)
        if csr is None:
            if user is not None:
                return cp.status(
                    403, "Forbidden", f"User {user['username']!r} cannot {request.method} {request.path}"
                )
            return await handler(request)  # type: ignore[no-any-return]
        user = user or _peer_user(request)
        if user is None and bearer and bearer in request.app[cp.TOKENS]:
            user = {"username": "token-user", "groups": ["system:masters", "system:authenticated"]}
        if user is None:
            return cp.status(401, "Unauthorized", "Unauthorized")
        name, sub = csr.group(1), csr.group(2)
        try:
            if name is None and request.method == "POST":
                return await self._create(request, user)
            if user["username"].startswith("system:bootstrap:") and request.method not in ("GET",):
                raise cp.ApiError(403, "Forbidden", "bootstrappers may only create, get, list and watch CSRs")
            if sub == "approval" and request.method == "PUT" and name:
                return await self._approval(request, name)
            if sub is not None:
                raise cp.ApiError(404, "NotFound", f"subresource {sub} is not served")
        except cp.ApiError as exc:
            return cp.status(exc.code, exc.reason, exc.message)
        response = await route(request)
        return response

    def _token_user(self, token_id: str, secret: str) -> dict[str, Any] | None:
        obj = self.store.get(SECRETS, "kube-system", f"bootstrap-token-{token_id}")
        data = _valid_token_secret(obj, "authentication") if obj else None
        if data is None or not hmac.compare_digest(data.get("token-secret", ""), secret):
            return None
        extra = [g.strip() for g in data.get("auth-extra-groups", "").split(",") if g.strip()]
        groups = ["system:bootstrappers", *extra, "system:authenticated"]
        return {"username": f"system:bootstrap:{token_id}", "groups": groups}

    async def _create(self, request: web.Request, user: dict[str, Any]) -> web.Response:
        obj = await self.plane._body(request)
        if not isinstance(obj, dict) or not isinstance(obj.get("spec"), dict):
            raise cp.ApiError(400, "BadRequest", "the body must be a CertificateSigningRequest")
        spec = obj["spec"]
        try:
            x509.load_pem_x509_csr(base64.b64decode(spec.get("request", "")))
        except ValueError as exc:
            raise cp.ApiError(422, "Invalid", f"spec.request: Invalid value: {exc}") from exc
        if not spec.get("signerName"):
            raise cp.ApiError(422, "Invalid", "spec.signerName: Required value")
        seconds = spec.get("expirationSeconds")
        if seconds is not None and (not isinstance(seconds, int) or seconds < 600):
            raise cp.ApiError(
                422,
                "Invalid",
                "spec.expirationSeconds: may not specify a duration less than 600 seconds (10 minutes)",
            )
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise cp.ApiError(422, "Invalid", "metadata.name: Required value")
        spec.update(username=user["username"], groups=user["groups"], uid="")
        obj["kind"], obj["apiVersion"] = CSR.kind, CSR.api_version
        obj["status"] = {}
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=cp.now_text())
        meta.pop("resourceVersion", None)
        _, stored = await asyncio.to_thread(
            self.store.write, CSR, "", meta["name"], lambda old: obj, create=True
        )
        return web.json_response(stored, status=201)

    async def _approval(self, request: web.Request, name: str) -> web.Response:
        if request.content_type == "application/vnd.kubernetes.protobuf":  # kubectl certificate approve
            conditions = _protobuf_conditions(await request.read())
        else:
            body = await self.plane._body(request)
            conditions = ((body or {}).get("status") or {}).get("conditions") or []

        def mutate(old: dict[str, Any]) -> dict[str, Any]:
            old.setdefault("status", {})["conditions"] = conditions
            return old

        _, stored = await asyncio.to_thread(self.store.write, CSR, "", name, mutate)
        return web.json_response(stored)

    # -- the controllers: bootstrap signer, CSR approver and signer ---------------------------

    async def controllers(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _loop(self) -> None:
        while True:
            await asyncio.to_thread(self.reconcile)
            await asyncio.sleep(RECONCILE_SECONDS)

    def reconcile(self) -> None:
        if self.server:
            self._cluster_info()
        knobs_obj = self.store.get(CONFIGMAPS, "kube-system", "vnode-test-csr")
        knobs = (knobs_obj or {}).get("data") or {}
        seconds = int(knobs.get("signingDuration") or DEFAULT_SIGNING_SECONDS)
        csrs, _ = self.store.list(CSR, None)
        for csr in csrs:
            conditions = {c.get("type") for c in (csr.get("status") or {}).get("conditions") or []}
            if not conditions & {"Approved", "Denied", "Failed"} and knobs.get("hold") != "true":
                if self._approvable(csr, knobs):
                    self._update(csr, self._approve)
            elif "Approved" in conditions and not (csr.get("status") or {}).get("certificate"):
                self._update(csr, lambda obj: self._sign(obj, seconds))

    def _update(self, csr: dict[str, Any], change: Any) -> None:
        rv = csr["metadata"]["resourceVersion"]

        def mutate(old: dict[str, Any]) -> dict[str, Any]:
            if old["metadata"]["resourceVersion"] != rv:  # another master got there first
                raise cp.ApiError(409, "Conflict", "changed")
            change(old)
            return old

        with contextlib.suppress(cp.ApiError):
            self.store.write(CSR, "", csr["metadata"]["name"], mutate)

    def _approvable(self, csr: dict[str, Any], knobs: dict[str, str]) -> bool:
        spec = csr["spec"]
        request = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
        cn = [a.value for a in request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        orgs = [a.value for a in request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        node_subject = len(cn) == 1 and str(cn[0]).startswith("system:node:") and orgs == ["system:nodes"]
        if not node_subject:
            return False
        if spec["signerName"] == CLIENT_SIGNER:
            try:
                request.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                return False  # a kubelet client certificate has no SANs at all
            except x509.ExtensionNotFound:
                pass
            return "system:bootstrappers" in spec.get("groups", []) or spec.get("username") == cn[0]
        return spec["signerName"] == SERVING_SIGNER and knobs.get("approveServing") == "true"

    @staticmethod
    def _approve(obj: dict[str, Any]) -> None:
        condition = {
            "type": "Approved",
            "status": "True",
            "reason": "AutoApproved",
            "message": "Auto approving kubelet certificate after SubjectAccessReview.",
            "lastUpdateTime": cp.now_text(),
        }
        obj.setdefault("status", {}).setdefault("conditions", []).append(condition)

    def _sign(self, obj: dict[str, Any], max_seconds: int) -> None:
        spec = obj["spec"]
        request = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
        ca = x509.load_pem_x509_certificate(self.pki.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(self.pki.ca_key.read_bytes(), None)
        seconds = min(int(spec.get("expirationSeconds") or max_seconds), max_seconds)
        now = dt.datetime.now(dt.UTC)
        not_after = min(now + dt.timedelta(seconds=seconds), ca.not_valid_after_utc)
        usages = set(spec.get("usages") or [])
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH] if "client auth" in usages else []
        eku += [ExtendedKeyUsageOID.SERVER_AUTH] if "server auth" in usages else []
        builder = (
            x509.CertificateBuilder().subject_name(request.subject).issuer_name(ca.subject)
            .public_key(request.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )  # fmt: skip
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        with contextlib.suppress(x509.ExtensionNotFound):
            san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        pem = cert.public_bytes(serialization.Encoding.PEM)
        obj.setdefault("status", {})["certificate"] = base64.b64encode(pem).decode()

    def _cluster_info(self) -> None:
        """kubeadm's cluster-info and the bootstrap signer's JWS keys, rewritten only on change."""
        existing = self.store.get(CONFIGMAPS, "kube-public", "cluster-info")
        data = dict((existing or {}).get("data") or {})
        if "kubeconfig" not in data:
            ca = base64.b64encode(self.pki.ca_cert.read_bytes()).decode()
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "", "cluster": {"certificate-authority-data": ca, "server": self.server}}
                ],
                "contexts": [],
                "current-context": "",
                "preferences": {},
                "users": [],
            }
            data["kubeconfig"] = json.dumps(config, indent=2)
        wanted = {k: v for k, v in data.items() if not k.startswith("jws-kubeconfig-")}
        secrets, _ = self.store.list(SECRETS, "kube-system")
        for secret in secrets:
            token = _valid_token_secret(secret, "signing")
            if token is not None and token.get("token-secret"):
                key = f"jws-kubeconfig-{token['token-id']}"
                wanted[key] = detached_jws(data["kubeconfig"], token["token-id"], token["token-secret"])
        if existing is not None and wanted == data and existing.get("data") == data:
            return
        obj: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cluster-info", "namespace": "kube-public"},
            "data": wanted,
        }

        def mutate(old: dict[str, Any] | None) -> dict[str, Any]:
            if old is None:
                obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=cp.now_text())
                return obj
            if (old.get("data") or {}).get("kubeconfig") != wanted["kubeconfig"]:
                raise cp.ApiError(409, "Conflict", "another master wrote cluster-info")
            old["data"] = wanted
            return old

        with contextlib.suppress(cp.ApiError):
            self.store.write(CONFIGMAPS, "kube-public", "cluster-info", mutate, create=existing is None)


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """(field number, bytes) of the length-delimited fields of a protobuf message (the others,
    varints and fixed-size ones, are skipped)."""
    fields, at = [], 0

    def varint() -> int:
        nonlocal at
        value, shift = 0, 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 2:
            size = varint()
            fields.append((number, data[at : at + size]))
            at += size
        elif wire == 0:
            varint()
        else:
            at += 8 if wire == 1 else 4
    return fields


def _protobuf_conditions(body: bytes) -> list[dict[str, Any]]:
    """status.conditions of a CertificateSigningRequest sent as Kubernetes protobuf: the ``k8s\\0``
    magic, an ``Unknown`` envelope whose field 2 is the object; CSR field 3 is the status, whose
    field 1 repeats conditions (1 type, 2 reason, 3 message, 6 status)."""
    if not body.startswith(b"k8s\x00"):
        raise cp.ApiError(400, "BadRequest", "not a Kubernetes protobuf body")
    raw = next(v for n, v in _fields(body[4:]) if n == 2)
    status = next((v for n, v in _fields(raw) if n == 3), b"")
    conditions = []
    for number, value in _fields(status):
        if number == 1:
            parts = {n: v.decode() for n, v in _fields(value) if n in (1, 2, 3, 6)}
            condition = {"type": parts.get(1, ""), "status": parts.get(6, "True")}
            condition.update(reason=parts.get(2, ""), message=parts.get(3, ""), lastUpdateTime=cp.now_text())
            conditions.append(condition)
    return conditions


def install(plane: cp.ControlPlane, pki: ClusterPki) -> Bootstrap:
    """Serve the CSR API, cluster-info and bootstrap tokens on ``plane`` (a TLS master). Call
    before the control plane's ``authenticate`` middleware is appended: the gate runs first."""
    if CSR not in cp.RESOURCES:
        cp.RESOURCES.append(CSR)
    bootstrap = Bootstrap(plane, pki)
    plane.app.middlewares.append(bootstrap.gate)
    plane.app.cleanup_ctx.append(bootstrap.controllers)
    return bootstrap


def ip_sans(cert_pem: bytes) -> list[str]:
    """The IP SANs of a certificate (for tests)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(a) for a in san.get_values_for_type(x509.IPAddress)]
