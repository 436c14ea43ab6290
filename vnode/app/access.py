"""Builds the node's access control from Settings: TLS policy, authenticators, authorizer.

Kept apart from ``wiring`` so that the security choices read in one place:

- the serving context gets TLS >= 1.2, ECDHE+AEAD suites, and the client CAs: the configured
  ``auth.clientCAFile`` and the node's local CA (created at first start with the operator's
  break-glass admin certificate, ``vnode.security.localca``);
- tokens go to TokenReview only with a control plane (``auth.tokenWebhook``, on by default there);
  the local API also takes its own ``local.token`` with full rights;
- authorization is ``Webhook`` by default with a control plane and ``AlwaysAllow`` standalone,
  where the only way in is a certificate from the local CA (or anonymous, if turned on).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vnode import errors
from vnode.api.guard import Guard
from vnode.clients.masters import Masters
from vnode.config.settings import Settings
from vnode.security import tlspolicy
from vnode.security.authn import Authenticator, TokenReviewer, User
from vnode.security.authz import AlwaysAllow, Authorizer, WebhookAuthorizer, check_mode
from vnode.security.localca import LocalPki, ensure_local_pki, local_ca_name

WEBHOOK_TIMEOUT = 5.0  # per master: a request waits for its own authentication
LOCAL_ADMIN = User("vnode:local-admin", ("system:masters",), method="local-token", full_access=True)


def local_pki(settings: Settings) -> LocalPki:
    return LocalPki(settings.pki_dir)


def check(settings: Settings) -> tuple[bool, str]:
    """(token webhook on, authorization mode), or a ConfigError naming the field."""
    auth, cluster = settings.auth, settings.cluster.configured
    mode = auth.authorization_mode or ("Webhook" if cluster else "AlwaysAllow")
    check_mode(mode, cluster)
    webhook = cluster if auth.token_webhook is None else auth.token_webhook
    if webhook and not cluster:
        raise errors.ConfigError(
            "auth.tokenWebhook", "TokenReview needs a control plane (--master or --kubeconfig)"
        )
    return webhook, mode


async def secure_context(settings: Settings, context: ssl.SSLContext) -> ssl.SSLContext:
    """The TLS policy and client CAs on the serving context (creates the local CA if missing)."""
    pki = local_pki(settings)
    await asyncio.to_thread(ensure_local_pki, pki, settings.node.name)
    cas: list[Path] = [pki.ca_cert]
    if settings.auth.client_ca_file is not None:
        cas.insert(0, settings.auth.client_ca_file)
    server = settings.server
    return tlspolicy.apply(
        context, min_version=server.tls_min_version, cipher_suites=server.tls_cipher_suites, client_cas=cas
    )


@dataclass
class Access:
    """The guards of the kubelet API and of the local API (they share caches)."""

    kubelet: Guard
    local: Guard
    reviewer: TokenReviewer | None
    authorizer: Authorizer


def build_access(settings: Settings, masters: Masters | None, local_token: str | None) -> Access:
    webhook, mode = check(settings)
    auth = settings.auth

    async def post(path: str, body: dict[str, Any]) -> Any:
        assert masters is not None
        return await masters.request("POST", path, body=body, timeout=WEBHOOK_TIMEOUT)

    reviewer = None
    if webhook:
        reviewer = TokenReviewer(
            post, ttl=auth.token_webhook_cache_ttl, offline_ttl=auth.offline_authorized_ttl
        )
    authorizer: Authorizer = AlwaysAllow()
    if mode == "Webhook":
        authorizer = WebhookAuthorizer(
            post,
            authorized_ttl=auth.webhook_cache_authorized_ttl,
            unauthorized_ttl=auth.webhook_cache_unauthorized_ttl,
            offline_ttl=auth.offline_authorized_ttl,
        )
    ca_name = local_ca_name(local_pki(settings))
    kubelet = Authenticator(local_ca_name=ca_name, reviewer=reviewer, anonymous=auth.anonymous)
    statics = {local_token: LOCAL_ADMIN} if local_token else {}
    local = Authenticator(
        local_ca_name=ca_name, reviewer=reviewer, static_tokens=statics, anonymous=auth.anonymous
    )
    node = settings.node.name
    return Access(Guard(kubelet, authorizer, node), Guard(local, authorizer, node), reviewer, authorizer)
