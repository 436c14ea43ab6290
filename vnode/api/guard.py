"""The authentication and authorization filter in front of the kubelet API and the local API.

It runs before every handler, as kubelet's auth filter does (so an unknown path or a wrong
method without credentials is 401, not 404/405). The kubelet API answers kubelet's texts:
401 ``Unauthorized``; 403 ``Forbidden (user=…, verb=…, resource=nodes, subresource(s)=[…])``;
500 ``Authorization error (…)`` when no decision can be made (fail closed: see
``vnode.security.authz`` for the offline policy). The local API gets the same decisions as
``(code, message)`` and wraps them in Status bodies itself. The identity is taken from the TLS
transport's verified peer certificate and the request headers (``vnode.security.authn``); the
authenticated user is left in ``request[USER]`` for handlers that want it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from vnode.errors import AuthorizationError, Unauthenticated
from vnode.security.authn import Authenticator, User
from vnode.security.authz import (
    Authorizer,
    authorize_any,
    describe,
    kubelet_attributes,
    local_api_attributes,
)

log = logging.getLogger(__name__)

AUDIT_SECONDS = 60.0

USER: web.RequestKey[User] = web.RequestKey("vnode_user", User)


def _peer(request: web.Request) -> Any:
    transport = request.transport
    return transport.get_extra_info("peercert") if transport is not None else None


class Guard:
    """Authenticates with ``authenticator`` and authorizes with ``authorizer`` (see module doc)."""

    def __init__(self, authenticator: Authenticator, authorizer: Authorizer, node_name: str) -> None:
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.node_name = node_name
        self._break_glass: dict[str, tuple[float, int]] = {}  # user -> (last line's time, unlogged)

    def _audit_break_glass(self, name: str, method: str, path: str) -> None:
        """Log break-glass use at most once a minute per certificate, with a count of the rest:
        an operator's script polling the node must not drown the log (it hid a failure in CI)."""
        now = time.monotonic()
        last, unlogged = self._break_glass.get(name, (-AUDIT_SECONDS, 0))
        if now - last < AUDIT_SECONDS:
            self._break_glass[name] = (last, unlogged + 1)
            return
        more = f" (and {unlogged} more requests since the last line)" if unlogged else ""
        log.info("break-glass certificate %s: %s %s%s", name, method, path, more)
        self._break_glass[name] = (now, 0)

    async def _user(self, request: web.Request) -> User:
        headers = request.headers
        return await self.authenticator.authenticate(
            _peer(request), headers.get("Authorization"), headers.get("Sec-WebSocket-Protocol")
        )

    @web.middleware
    async def kubelet(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The kubelet API's filter: kubelet's status codes and texts."""
        try:
            user = await self._user(request)
        except Unauthenticated as exc:
            log.debug("401 %s %s: %s", request.method, request.path, exc)
            return web.Response(status=401, text="Unauthorized")
        attributes = kubelet_attributes(request.method, request.path, self.node_name)
        try:
            decision = await authorize_any(self.authorizer, user, attributes)
        except AuthorizationError as exc:
            what = describe(user, attributes)
            log.warning("cannot authorize %s: %s", what, exc)
            return web.Response(status=500, text=f"Authorization error ({what})")
        if not decision.allowed:
            log.debug("403 %s %s for %s: %s", request.method, request.path, user.name, decision.reason)
            return web.Response(status=403, text=f"Forbidden ({describe(user, attributes)})\n")
        if user.full_access and user.method == "x509":
            self._audit_break_glass(user.name, request.method, request.path)
        request[USER] = user
        response: web.StreamResponse = await handler(request)
        return response

    async def local(self, request: web.Request) -> tuple[int, str] | None:
        """The local API's check: None to go on, else (status, message) for a Status body."""
        try:
            user = await self._user(request)
        except Unauthenticated:
            return 401, "Unauthorized"
        attributes = local_api_attributes(request.method, request.path, request.query)
        try:
            decision = await authorize_any(self.authorizer, user, [attributes])
        except AuthorizationError as exc:
            log.warning("cannot authorize %s on the local API: %s", user.name, exc)
            return 500, f"Authorization error (user={user.name}, verb={attributes.verb})"
        if not decision.allowed:
            target = attributes.path or "/".join(
                p for p in (attributes.resource, attributes.subresource) if p
            )
            where = f' in the namespace "{attributes.namespace}"' if attributes.namespace else ""
            return 403, f'User "{user.name}" cannot {attributes.verb} {target}{where}'
        request[USER] = user
        return None
