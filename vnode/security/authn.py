"""Who is calling: x509 client certificates, bearer tokens (TokenReview), anonymous.

Kubelet's delegating authenticator, restated: the authenticators form a union tried in order,
x509 client certificate, then ``Authorization: Bearer`` token, then the WebSocket-protocol token
(``base64url.bearer.authorization.k8s.io.<token>``); the first success wins and every
authenticated user gets the extra group ``system:authenticated``. A credential that is present but
rejected is an *error*, and anonymous access (``system:anonymous`` in ``system:unauthenticated``,
off by default) applies only when no credential was presented at all. The HTTP layer answers 401
for both errors and "nobody" (``vnode.api.guard``).

- **x509**: OpenSSL has verified the chain during the handshake (``verify_mode=CERT_OPTIONAL`` with
  the client CAs loaded, ``vnode.security.tls``), so the peer certificate in the transport is
  trusted as is: user = subject CN, groups = subject O values. A certificate from a CA that is not
  trusted fails the *handshake* (alert ``unknown_ca``) instead of reaching HTTP as kubelet's
  401 does: Python's ``ssl`` can ask for a client certificate only with verification.
- **tokens**: a static table (the local API's ``local.token``, with full rights) and, when
  enabled, ``TokenReview`` on the API server through ``post``. Review results, positive and
  negative, are cached for ``ttl`` (kubelet's ``--authentication-token-webhook-cache-ttl``, 2 m)
  under the token's SHA-256, in a bounded LRU; concurrent lookups of one token share one review.
  While the API server is unreachable, a cached positive result keeps serving ``offline_ttl``
  beyond its TTL (``auth.offlineAuthorizedTTL``); otherwise the request fails (401).
- **break-glass**: a certificate issued directly by the node's local CA with the organization
  ``vnode:break-glass`` (rule and files in ``vnode.security.localca``) is marked ``full_access``:
  ``vnode.security.authz`` is not asked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from vnode import errors
from vnode.errors import Unauthenticated
from vnode.security.localca import BREAK_GLASS_GROUP

log = logging.getLogger(__name__)

AUTHENTICATED = "system:authenticated"
ANONYMOUS = "system:anonymous"
UNAUTHENTICATED = "system:unauthenticated"
WS_TOKEN_PREFIX = "base64url.bearer.authorization.k8s.io."
CACHE_ENTRIES = 4096
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"

Post = Callable[[str, dict[str, Any]], Awaitable[Any]]  # (path, body) -> decoded JSON answer


@dataclass(frozen=True)
class User:
    """An authenticated caller; ``full_access`` skips authorization (local token, break-glass)."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    method: str = "x509"  # x509 | token | anonymous | local-token
    full_access: bool = False


K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded LRU of values with a per-entry TTL; stale entries can be read on purpose."""

    def __init__(self, max_entries: int = CACHE_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()  # value, expiry

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries[key] = (value, self.clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, key: K, *, grace: float = 0.0) -> V | None:
        """The value if it expired less than ``grace`` seconds ago (0: only fresh values)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expiry = entry
        if self.clock() >= expiry + grace:
            return None  # kept until evicted: a failed refresh may read it with a longer grace
        self._entries.move_to_end(key)
        return value


class SingleFlight(Generic[K, V]):
    """Concurrent lookups of one key share one call (one TokenReview/SAR for a burst)."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await call()
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(result)
            return result
        finally:
            del self._running[key]


class TokenReviewer:
    """Bearer tokens through ``TokenReview``, cached (see the module docstring)."""

    def __init__(
        self,
        post: Post,
        *,
        ttl: float = 120.0,
        offline_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.post = post
        self.ttl = ttl
        self.offline_ttl = offline_ttl
        self.cache: TtlCache[str, tuple[User | None]] = TtlCache(clock=clock)
        self._flight: SingleFlight[str, User | None] = SingleFlight()
        self.reviews = 0  # TokenReviews actually posted, for tests and status

    async def review(self, token: str) -> User | None:
        """The user, or None if the API server rejected the token; ``Unavailable`` if undecided."""
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            return cached[0]
        try:
            return await self._flight.run(key, lambda: self._ask(key, token))
        except errors.Unavailable:
            stale = self.cache.get(key, grace=self.offline_ttl) if self.offline_ttl else None
            if stale is not None and stale[0] is not None:
                log.warning(
                    "API server unreachable: using the cached review of %s (offline TTL)", stale[0].name
                )
                return stale[0]
            raise

    async def _ask(self, key: str, token: str) -> User | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        self.reviews += 1
        try:
            answer = await self.post(TOKEN_REVIEW_PATH, body)
        except errors.Unavailable:
            raise
        except errors.VnodeError as exc:  # a 4xx: the review itself was refused
            raise errors.Unavailable(f"TokenReview failed: {exc}") from exc
        user = parse_token_review(answer)
        self.cache.put(key, (user,), self.ttl)
        return user


def parse_token_review(answer: Any) -> User | None:
    """The user of a TokenReview answer, None if not authenticated; ``Unavailable`` if malformed."""
    status = answer.get("status") if isinstance(answer, dict) else None
    if not isinstance(status, dict):
        raise errors.Unavailable("TokenReview answer has no status")
    if not status.get("authenticated"):
        return None
    user = status.get("user") or {}
    name = user.get("username") if isinstance(user, dict) else None
    if not isinstance(name, str) or not name:
        raise errors.Unavailable("TokenReview answer has no username")
    groups = tuple(str(g) for g in user.get("groups") or ())
    extra = {
        str(k): tuple(str(x) for x in v) for k, v in (user.get("extra") or {}).items() if isinstance(v, list)
    }
    return User(name=name, groups=groups, uid=str(user.get("uid") or ""), extra=extra, method="token")


Peer = Mapping[str, Any]  # ``SSLObject.getpeercert()``: {"subject": ((("commonName", "x"),), ...), ...}


def _names(dn: Any, attribute: str) -> list[str]:
    out = []
    for rdn in dn or ():
        for key, value in rdn:
            if key == attribute:
                out.append(str(value))
    return out


def x509_user(peer: Peer, local_ca_name: str | None) -> User:
    """The user of a verified client certificate; break-glass per ``vnode.security.localca``."""
    names = _names(peer.get("subject"), "commonName")
    if not names or not names[0]:
        raise Unauthenticated("the client certificate has no common name")
    groups = tuple(_names(peer.get("subject"), "organizationName"))
    issuer = peer.get("issuer") or ()
    from_local_ca = (
        local_ca_name is not None and _names(issuer, "commonName") == [local_ca_name] and len(issuer) == 1
    )
    break_glass = from_local_ca and BREAK_GLASS_GROUP in groups
    return User(name=names[0], groups=groups, method="x509", full_access=break_glass)


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive); None if absent."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def websocket_token(protocols: str | None) -> str | None:
    """The token of a ``base64url.bearer.authorization.k8s.io.<token>`` WebSocket subprotocol."""
    for entry in (protocols or "").split(","):
        entry = entry.strip()
        if entry.startswith(WS_TOKEN_PREFIX):
            encoded = entry[len(WS_TOKEN_PREFIX) :]
            try:
                token = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise Unauthenticated("invalid bearer token") from None
            return token or None
    return None


class Authenticator:
    """One listener's authenticator union (see the module docstring)."""

    def __init__(
        self,
        *,
        local_ca_name: str | None = None,
        reviewer: TokenReviewer | None = None,
        static_tokens: Mapping[str, User] | None = None,
        anonymous: bool = False,
    ) -> None:
        self.local_ca_name = local_ca_name
        self.reviewer = reviewer
        self.static_tokens = dict(static_tokens or {})
        self.anonymous = anonymous

    async def authenticate(
        self, peer: Peer | None, authorization: str | None, websocket_protocols: str | None
    ) -> User:
        """The caller; ``Unauthenticated`` (401) when rejected or nobody and anonymous is off."""
        if peer:
            return _authenticated(x509_user(peer, self.local_ca_name))
        if self.static_tokens or self.reviewer is not None:
            token = bearer_token(authorization) or websocket_token(websocket_protocols)
            if token is not None:
                return _authenticated(await self._token(token))
        if self.anonymous:
            return User(name=ANONYMOUS, groups=(UNAUTHENTICATED,), method="anonymous")
        raise Unauthenticated("no credentials")

    async def _token(self, token: str) -> User:
        for known, static in self.static_tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return static
        if self.reviewer is None:
            raise Unauthenticated("invalid bearer token")
        try:
            reviewed = await self.reviewer.review(token)
        except errors.Unavailable as exc:
            log.warning("cannot review a bearer token: %s", exc)
            raise Unauthenticated("token review unavailable") from exc
        if reviewed is None:
            raise Unauthenticated("invalid bearer token")
        return reviewed


def _authenticated(user: User) -> User:
    if AUTHENTICATED in user.groups:
        return user
    return User(user.name, (*user.groups, AUTHENTICATED), user.uid, user.extra, user.method, user.full_access)
