"""What a caller may do: kubelet's request-to-attributes mapping, AlwaysAllow and the SAR webhook.

**Mapping** (kubelet's ``pkg/kubelet/server/auth.go``, with KubeletFineGrainedAuthz, GA in 1.36):
resource ``nodes``, name = this node, API group ``""``, version ``v1``; the subresource from the
path by whole segments: ``/stats`` -> stats, ``/metrics`` -> metrics, ``/logs`` -> log,
``/checkpoint`` -> checkpoint, and for ``/pods``, ``/runningpods``, ``/healthz``, ``/configz``,
``/statusz`` the fine-grained name first and ``proxy`` second (either allows); everything else
(``/containerLogs``, ``/exec``, ...) -> proxy. Verb from the method: GET -> get, POST -> create,
PUT -> update, PATCH -> patch, DELETE -> delete, other methods -> "" (as kubelet). Two deliberate
differences, both stricter or equal:

- HEAD -> get (kubelet leaves it empty): vnode serves HEAD like GET, so it needs what GET needs;
- ``/exec``, ``/attach``, ``/portForward`` and ``/run`` always need ``create``: a WebSocket
  upgrade is a GET, and upstream authorizing it as ``get nodes/proxy`` lets a "read-only" grant run
  commands (kubernetes PR #136550, closed unmerged; upstream documents that ``get nodes/proxy`` is
  not read-only). The API server's kubelet-client identity holds every verb, so proxied
  ``kubectl exec`` keeps working.

**Webhook**: one ``SubjectAccessReview`` per attribute set, answers cached in a bounded LRU keyed
by user, groups, uid, extra and attributes: allowed for ``authorized_ttl`` (5 m), denied for
``unauthorized_ttl`` (30 s). **Offline policy**: with the API server unreachable, cached answers
serve until their TTL; an *allowed* answer may serve ``offline_ttl`` longer (0 by default: off);
with nothing cached the request fails closed (``AuthorizationError`` -> kubelet's 500
"Authorization error (...)"). x509 authentication and break-glass certificates need no API server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from vnode import errors
from vnode.errors import AuthorizationError
from vnode.security.authn import Post, SingleFlight, TtlCache, User

log = logging.getLogger(__name__)

SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
COARSE = {"stats": "stats", "metrics": "metrics", "logs": "log", "checkpoint": "checkpoint"}
FINE = {
    "pods": "pods",
    "runningpods": "pods",
    "healthz": "healthz",
    "configz": "configz",
    "statusz": "statusz",
}
ALWAYS_CREATE = ("exec", "attach", "portForward", "run")
MODES = ("AlwaysAllow", "Webhook")


@dataclass(frozen=True)
class Attributes:
    """A SAR's resourceAttributes, or nonResourceAttributes when ``path`` is set."""

    verb: str
    resource: str = ""
    subresource: str = ""
    name: str = ""
    namespace: str = ""
    group: str = ""
    version: str = "v1"
    path: str = ""

    def spec(self) -> dict[str, Any]:
        if self.path:
            return {"nonResourceAttributes": {"path": self.path, "verb": self.verb}}
        attributes = {
            "namespace": self.namespace,
            "verb": self.verb,
            "group": self.group,
            "version": self.version,
            "resource": self.resource,
            "subresource": self.subresource,
            "name": self.name,
        }
        return {"resourceAttributes": {k: v for k, v in attributes.items() if v or k == "group"}}


def kubelet_attributes(method: str, path: str, node_name: str) -> list[Attributes]:
    """The attribute sets a kubelet API request needs (any one allowed suffices)."""
    first = next((segment for segment in path.split("/") if segment), "")
    verb = "create" if first in ALWAYS_CREATE else VERBS.get(method.upper(), "")
    subresources = (
        [COARSE[first]] if first in COARSE else [FINE[first], "proxy"] if first in FINE else ["proxy"]
    )
    return [Attributes(verb=verb, resource="nodes", subresource=s, name=node_name) for s in subresources]


def describe(user: User, attributes: list[Attributes]) -> str:
    """kubelet's ``(user=…, verb=…, resource=nodes, subresource(s)=[a b])``."""
    verb = attributes[0].verb if attributes else ""
    subresources = " ".join(a.subresource for a in attributes)
    return f"user={user.name}, verb={verb}, resource=nodes, subresource(s)=[{subresources}]"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class Authorizer(Protocol):
    async def authorize(self, user: User, attributes: Attributes) -> Decision: ...


class AlwaysAllow:
    """``--authorization-mode=AlwaysAllow``: every authenticated (or anonymous) caller."""

    async def authorize(self, user: User, attributes: Attributes) -> Decision:
        return Decision(True)


CacheKey = tuple[str, tuple[str, ...], str, tuple[tuple[str, tuple[str, ...]], ...], Attributes]


class WebhookAuthorizer:
    """``SubjectAccessReview`` through ``post``, cached (see the module docstring)."""

    def __init__(
        self,
        post: Post,
        *,
        authorized_ttl: float = 300.0,
        unauthorized_ttl: float = 30.0,
        offline_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.post = post
        self.authorized_ttl = authorized_ttl
        self.unauthorized_ttl = unauthorized_ttl
        self.offline_ttl = offline_ttl
        self.cache: TtlCache[CacheKey, Decision] = TtlCache(clock=clock)
        self._flight: SingleFlight[CacheKey, Decision] = SingleFlight()
        self.reviews = 0

    async def authorize(self, user: User, attributes: Attributes) -> Decision:
        extra = tuple(sorted((k, tuple(v)) for k, v in user.extra.items()))
        key: CacheKey = (user.name, tuple(user.groups), user.uid, extra, attributes)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            return await self._flight.run(key, lambda: self._ask(key, user, attributes))
        except errors.Unavailable as exc:
            stale = self.cache.get(key, grace=self.offline_ttl) if self.offline_ttl else None
            if stale is not None and stale.allowed:
                log.warning("API server unreachable: %s allowed from the cache (offline TTL)", user.name)
                return stale
            raise AuthorizationError(str(exc)) from exc

    async def _ask(self, key: CacheKey, user: User, attributes: Attributes) -> Decision:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                **attributes.spec(),
                "user": user.name,
                "groups": list(user.groups),
                "uid": user.uid,
                "extra": {k: list(v) for k, v in user.extra.items()},
            },
        }
        self.reviews += 1
        try:
            answer = await self.post(SAR_PATH, body)
        except errors.Unavailable:
            raise
        except errors.VnodeError as exc:
            raise errors.Unavailable(f"SubjectAccessReview failed: {exc}") from exc
        decision = parse_review(answer)
        self.cache.put(key, decision, self.authorized_ttl if decision.allowed else self.unauthorized_ttl)
        return decision


def parse_review(answer: Any) -> Decision:
    status = answer.get("status") if isinstance(answer, dict) else None
    if not isinstance(status, dict):
        raise errors.Unavailable("SubjectAccessReview answer has no status")
    allowed = status.get("allowed") is True and status.get("denied") is not True
    reason = str(status.get("reason") or status.get("evaluationError") or "")
    return Decision(allowed, reason)


async def authorize_any(authorizer: Authorizer, user: User, attribute_sets: list[Attributes]) -> Decision:
    """Allowed if any set is (tried in order, as kubelet does); ``AuthorizationError`` stops it."""
    if user.full_access:
        return Decision(True, "full access")
    reasons = []
    for attributes in attribute_sets:
        decision = await authorizer.authorize(user, attributes)
        if decision.allowed:
            return decision
        reasons.append(decision.reason)
    return Decision(False, "; ".join(r for r in reasons if r))


# -- the local API (vnode.api.local): a read-only Kubernetes API -----------------------------

NON_RESOURCE_ROOTS = ("version", "api", "apis", "openapi", "healthz", "livez", "readyz")


def local_api_attributes(method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """The API server's attributes for a local API request (``get pods``, ``list configmaps`` ...)."""
    verb = VERBS.get(method.upper(), "")
    parts = [p for p in path.split("/") if p]
    if parts[:2] != ["api", "v1"] or len(parts) < 3:
        return Attributes(verb=verb, path=path or "/")
    rest, namespace = parts[2:], ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name, subresource = [*rest, "", "", ""][:3]
    if verb == "get" and not name:
        verb = "watch" if query.get("watch") in ("1", "true") else "list"
    return Attributes(verb=verb, resource=resource, subresource=subresource, name=name, namespace=namespace)


def check_mode(mode: str, cluster: bool) -> None:
    """A ConfigError naming the field when the mode can't work here."""
    if mode not in MODES:
        raise errors.ConfigError("auth.authorizationMode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "Webhook" and not cluster:
        raise errors.ConfigError(
            "auth.authorizationMode", "Webhook needs a control plane (--master or --kubeconfig)"
        )
