"""Authentication and authorization: the mapping, the caches, the offline policy, and the guard
in front of a real HTTPS kubelet API (OpenSSL verifying client certificates) and the local API."""

from __future__ import annotations

import asyncio
import logging
import ssl
import stat
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from integration.pki import ClusterPki
from vnode import errors
from vnode.api.guard import Guard
from vnode.api.server import KubeletHandlers, KubeletServer
from vnode.config.loader import load_settings
from vnode.errors import AuthorizationError, Unauthenticated
from vnode.security import tlspolicy
from vnode.security.authn import Authenticator, TokenReviewer, TtlCache, User
from vnode.security.authz import (
    AlwaysAllow,
    Attributes,
    WebhookAuthorizer,
    kubelet_attributes,
    local_api_attributes,
)
from vnode.security.localca import LocalPki, generate, local_ca_name
from vnode.security.tls import ensure_self_signed, server_ssl_context

NODE = "edge1"


# -- mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "verb", "subresources"),
    [
        ("GET", "/stats/summary", "get", ["stats"]),
        ("GET", "/statsx", "get", ["proxy"]),  # segments, not string prefixes
        ("GET", "/metrics", "get", ["metrics"]),
        ("GET", "/metrics/cadvisor", "get", ["metrics"]),
        ("GET", "/logs/syslog", "get", ["log"]),
        ("POST", "/checkpoint/ns/p/c", "create", ["checkpoint"]),
        ("GET", "/pods", "get", ["pods", "proxy"]),
        ("GET", "/runningpods/", "get", ["pods", "proxy"]),
        ("GET", "/healthz/ping", "get", ["healthz", "proxy"]),
        ("GET", "/configz", "get", ["configz", "proxy"]),
        ("HEAD", "/pods", "get", ["pods", "proxy"]),
        ("GET", "/containerLogs/ns/p/c", "get", ["proxy"]),
        ("PUT", "/containerLogs/ns/p/c", "update", ["proxy"]),
        ("PATCH", "/x", "patch", ["proxy"]),
        ("DELETE", "/pods", "delete", ["pods", "proxy"]),
        ("OPTIONS", "/pods", "", ["pods", "proxy"]),
        ("GET", "/exec/ns/p/c", "create", ["proxy"]),  # a WebSocket upgrade needs create
        ("GET", "/attach/ns/p/c", "create", ["proxy"]),
        ("GET", "/portForward/ns/p", "create", ["proxy"]),
        ("POST", "/run/ns/p/c", "create", ["proxy"]),
        ("GET", "/", "get", ["proxy"]),
    ],
)
def test_kubelet_attributes(method: str, path: str, verb: str, subresources: list[str]) -> None:
    attributes = kubelet_attributes(method, path, NODE)
    assert [a.subresource for a in attributes] == subresources
    assert {(a.verb, a.resource, a.name, a.group, a.version) for a in attributes} == {
        (verb, "nodes", NODE, "", "v1")
    }


def test_local_api_attributes() -> None:
    assert local_api_attributes("GET", "/api/v1/namespaces/d/pods", {}) == Attributes(
        "list", "pods", namespace="d"
    )
    assert local_api_attributes("GET", "/api/v1/pods", {"watch": "true"}).verb == "watch"
    assert local_api_attributes("GET", "/api/v1/namespaces/d/pods/p/log", {}) == Attributes(
        "get", "pods", "log", "p", "d"
    )
    assert local_api_attributes("GET", "/api/v1/nodes/n", {}) == Attributes("get", "nodes", name="n")
    assert local_api_attributes("GET", "/version", {}) == Attributes("get", path="/version")
    assert Attributes("get", path="/version").spec() == {
        "nonResourceAttributes": {"path": "/version", "verb": "get"}
    }


# -- caches ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ttl_cache_expires_and_is_bounded() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(max_entries=3, clock=clock)
    for i in range(5):
        cache.put(str(i), i, ttl=10)
    assert len(cache) == 3 and cache.get("0") is None and cache.get("4") == 4
    clock.now += 10
    assert cache.get("4") is None and cache.get("4", grace=5) == 4


@dataclass
class FakeApi:
    """The API server side of the webhooks: answers from a table, or is unreachable."""

    tokens: dict[str, str]
    allowed: set[tuple[str, str, str]]  # (user, verb, subresource)
    down: bool = False
    calls: int = 0

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise errors.Unavailable("every master failed")
        spec = body["spec"]
        if body["kind"] == "TokenReview":
            user = self.tokens.get(spec["token"])
            if user is None:
                return {"status": {"authenticated": False}}
            return {"status": {"authenticated": True, "user": {"username": user, "groups": ["team"]}}}
        attrs = spec["resourceAttributes"]
        return {"status": {"allowed": (spec["user"], attrs["verb"], attrs["subresource"]) in self.allowed}}


async def test_token_reviews_are_cached_and_shared() -> None:
    clock = Clock()
    api = FakeApi({"good": "alice"}, set())
    reviewer = TokenReviewer(api.post, ttl=120, clock=clock)
    users = await asyncio.gather(*(reviewer.review("good") for _ in range(10)))
    assert {u.name if u else None for u in users} == {"alice"} and api.calls == 1
    assert await reviewer.review("bad") is None and await reviewer.review("bad") is None
    assert api.calls == 2  # rejections are cached too
    clock.now += 120
    await reviewer.review("good")
    assert api.calls == 3


async def test_token_review_offline_ttl() -> None:
    clock = Clock()
    api = FakeApi({"good": "alice"}, set())
    strict = TokenReviewer(api.post, ttl=120, clock=clock)
    lenient = TokenReviewer(api.post, ttl=120, offline_ttl=3600, clock=clock)
    await strict.review("good")
    await lenient.review("good")
    api.down = True
    clock.now += 119
    assert (await strict.review("good")) is not None  # cached: no API server needed
    clock.now += 2
    with pytest.raises(errors.Unavailable):
        await strict.review("good")
    user = await lenient.review("good")
    assert user is not None and user.name == "alice"
    clock.now += 3600
    with pytest.raises(errors.Unavailable):
        await lenient.review("good")


async def test_sar_cache_ttls_and_offline() -> None:
    clock = Clock()
    api = FakeApi({}, {("alice", "get", "log")})
    authz = WebhookAuthorizer(api.post, authorized_ttl=300, unauthorized_ttl=30, offline_ttl=600, clock=clock)
    alice, bob = User("alice"), User("bob")
    log_get = Attributes("get", "nodes", "log", NODE)
    assert (await authz.authorize(alice, log_get)).allowed
    assert not (await authz.authorize(bob, log_get)).allowed
    assert api.calls == 2
    clock.now += 29
    await authz.authorize(alice, log_get)
    await authz.authorize(bob, log_get)
    assert api.calls == 2
    clock.now += 1  # the denial expires at 30 s, the allowance lives on
    await authz.authorize(bob, log_get)
    await authz.authorize(alice, log_get)
    assert api.calls == 3
    api.down = True
    clock.now += 300 + 100  # past the allowance's TTL, within the offline TTL
    assert (await authz.authorize(alice, log_get)).allowed
    with pytest.raises(AuthorizationError):
        await authz.authorize(bob, log_get)  # denials get no offline grace
    clock.now += 600
    with pytest.raises(AuthorizationError):
        await authz.authorize(alice, log_get)
    # the cache key holds the groups: another group set is another question
    api.down, calls = False, api.calls
    await authz.authorize(User("alice", ("x",)), log_get)
    assert api.calls == calls + 1


# -- a real HTTPS kubelet API ----------------------------------------------------------------


@dataclass
class Pki:
    cluster: ClusterPki
    other: ClusterPki
    local: LocalPki
    serving: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    local = LocalPki(base / "root-pki")
    generate(local, NODE)
    serving = base / "kubelet.crt", base / "kubelet.key"
    ensure_self_signed(*serving, hostnames=["localhost"], ips=["127.0.0.1"])
    return Pki(ClusterPki(base / "cluster"), ClusterPki(base / "other"), local, serving)


def client_context(cert: tuple[Path, Path] | None = None, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: the point is that it is refused
        warnings.simplefilter("ignore", DeprecationWarning)
        for attribute, version in versions.items():
            setattr(ctx, attribute, version)
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


class Provider:
    def list_pods(self) -> list[dict[str, Any]]:
        return []

    async def locate_log(self, *args: Any) -> Any:
        raise errors.NotFound("no such pod")


async def ok() -> None:
    return None


@pytest.fixture
async def kubelet(pki: Pki) -> AsyncIterator[Callable[..., Any]]:
    """Starts a kubelet API with a guard; yields ``start(authenticator_kwargs, authorizer)``."""
    servers: list[KubeletServer] = []

    async def start(authorizer: Any = None, **kwargs: Any) -> str:
        context = server_ssl_context(*pki.serving)
        tlspolicy.apply(context, client_cas=[pki.cluster.ca_cert, pki.local.ca_cert])
        authn = Authenticator(local_ca_name=local_ca_name(pki.local), **kwargs)
        guard = Guard(authn, authorizer or AlwaysAllow(), NODE)
        handlers = KubeletHandlers(Provider(), Provider(), {"ping": ok}, guard=guard.kubelet)
        server = KubeletServer(handlers, name="test")
        await server.start("127.0.0.1", 0, context)
        servers.append(server)
        return f"https://127.0.0.1:{server.bound_port}"

    yield start
    for server in servers:
        await server.stop(timeout=2)


async def call(
    url: str, path: str, ctx: ssl.SSLContext, method: str = "GET", token: str | None = None
) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.request(method, url + path, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def test_kubelet_api_codes_and_texts(
    pki: Pki, kubelet: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vnode.api.guard")
    api = FakeApi({"log-token": "log-reader"}, {("log-reader", "get", "log"), ("viewer", "get", "pods")})
    url = await kubelet(WebhookAuthorizer(api.post), reviewer=TokenReviewer(api.post))
    nobody = client_context()
    viewer = client_context(pki.cluster.issue("viewer", server=False, organization="team"))
    norights = client_context(pki.cluster.issue("nobody", server=False))
    admin = client_context((pki.local.admin_cert, pki.local.admin_key))

    assert await call(url, "/pods", nobody) == (401, "Unauthorized")
    assert await call(url, "/nowhere", nobody) == (401, "Unauthorized")  # the filter runs first
    assert await call(url, "/pods", nobody, token="forged") == (401, "Unauthorized")
    assert await call(url, "/pods", norights) == (
        403,
        "Forbidden (user=nobody, verb=get, resource=nodes, subresource(s)=[pods proxy])\n",
    )
    assert (await call(url, "/pods", viewer))[0] == 200
    assert (await call(url, "/containerLogs/a/b/c", viewer))[0] == 403
    assert (await call(url, "/logs/x", nobody, token="log-token"))[0] == 404  # allowed, then no route
    assert (await call(url, "/pods", nobody, token="log-token"))[0] == 403
    assert (await call(url, "/pods", admin))[0] == 200  # break-glass: no review at all
    assert (await call(url, "/pods", admin, method="POST"))[0] == 405
    calls = api.calls
    assert (await call(url, "/pods", viewer))[0] == 200
    assert api.calls == calls  # cached
    api.down = True
    status, text = await call(url, "/healthz", norights)
    assert status == 500 and text.startswith("Authorization error (user=nobody, verb=get"), text
    assert (await call(url, "/pods", admin))[0] == 200  # break-glass works offline
    audit = [r.getMessage() for r in caplog.records if "break-glass certificate" in r.getMessage()]
    assert audit == ["break-glass certificate vnode:admin: GET /pods"]  # once a minute, not per request


async def test_untrusted_certificates_and_old_tls_are_refused(pki: Pki, kubelet: Callable[..., Any]) -> None:
    url = await kubelet()
    stranger = client_context(pki.other.issue("stranger", server=False, organization="vnode:break-glass"))
    with pytest.raises(aiohttp.ClientError):
        await call(url, "/pods", stranger)
    with pytest.raises(aiohttp.ClientError):
        await call(url, "/pods", client_context(maximum_version=ssl.TLSVersion.TLSv1_1))
    ok12 = client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    assert await call(url, "/pods", ok12) == (401, "Unauthorized")


async def test_break_glass_only_from_the_local_ca(pki: Pki, kubelet: Callable[..., Any]) -> None:
    api = FakeApi({}, set())
    url = await kubelet(WebhookAuthorizer(api.post))
    fake_glass = client_context(pki.cluster.issue("glass", server=False, organization="vnode:break-glass"))
    assert (await call(url, "/pods", fake_glass))[0] == 403
    assert (await call(url, "/pods", client_context((pki.local.admin_cert, pki.local.admin_key))))[0] == 200


async def test_anonymous_only_when_enabled(kubelet: Callable[..., Any]) -> None:
    api = FakeApi({}, {("system:anonymous", "get", "healthz")})
    closed = await kubelet(WebhookAuthorizer(api.post))
    opened = await kubelet(WebhookAuthorizer(api.post), anonymous=True, reviewer=TokenReviewer(api.post))
    assert (await call(closed, "/healthz", client_context()))[0] == 401
    assert (await call(opened, "/healthz", client_context()))[0] == 200
    assert (await call(opened, "/pods", client_context()))[0] == 403
    assert (await call(opened, "/pods", client_context(), token="bad"))[0] == 401  # not anonymous


async def test_authenticator_union_order() -> None:
    api = FakeApi({"t": "tom"}, set())
    authn = Authenticator(
        reviewer=TokenReviewer(api.post), static_tokens={"local": User("root", full_access=True)}
    )
    peer = {
        "subject": ((("organizationName", "g1"),), (("commonName", "carl"),), (("organizationName", "g2"),))
    }
    user = await authn.authenticate(peer, "Bearer t", None)
    assert (user.name, user.groups) == ("carl", ("g1", "g2", "system:authenticated"))
    assert (await authn.authenticate(None, "bearer t", None)).name == "tom"
    assert (await authn.authenticate(None, "Bearer local", None)).full_access
    ws = "v4.channel.k8s.io, base64url.bearer.authorization.k8s.io.dA"
    assert (await authn.authenticate(None, None, ws)).name == "tom"
    for header in ("Bearer nope", "Bearer local2"):
        with pytest.raises(Unauthenticated):
            await authn.authenticate(None, header, None)
    with pytest.raises(Unauthenticated):
        await authn.authenticate(None, "Basic abc", None)
    with pytest.raises(Unauthenticated):
        await authn.authenticate({"subject": ((("organizationName", "g"),),)}, None, None)


# -- files and settings ----------------------------------------------------------------------


def test_local_pki_files_and_modes(pki: Pki) -> None:
    for key in (pki.local.ca_key, pki.local.admin_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki.serving[1].stat().st_mode) == 0o600
    assert local_ca_name(pki.local).startswith(f"vnode-local-ca:{NODE}:")
    before = pki.local.admin_cert.read_bytes()
    generate(pki.local, NODE)  # a second start keeps what is valid
    assert pki.local.admin_cert.read_bytes() == before


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"--anonymous-auth": "yes"}, "--anonymous-auth"),
        ({"--authorization-mode": "RBAC"}, "--authorization-mode"),
        ({"--tls-min-version": "VersionTLS11"}, "--tls-min-version"),
        ({"--tls-cipher-suites": "TLS_RSA_WITH_AES_128_CBC_SHA"}, "--tls-cipher-suites"),
        ({"--authentication-token-webhook-cache-ttl": "-1s"}, "--authentication-token-webhook-cache-ttl"),
    ],
)
def test_bad_auth_settings_name_the_flag(flags: dict[str, str], field: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        load_settings(None, flags)
    assert info.value.path == field


def test_auth_settings_defaults_and_cross_checks() -> None:
    from vnode.app.access import check

    settings = load_settings(None, {})
    assert settings.auth.anonymous is False and check(settings) == (False, "AlwaysAllow")
    cluster = load_settings(None, {"--master": "http://10.0.0.1:8080"})
    assert check(cluster) == (True, "Webhook")
    for flags, field in (
        ({"--authorization-mode": "Webhook"}, "auth.authorizationMode"),
        ({"--authentication-token-webhook": "true"}, "auth.tokenWebhook"),
    ):
        with pytest.raises(errors.ConfigError) as info:
            check(load_settings(None, flags))
        assert info.value.path == field
    tuned = load_settings(
        None,
        {
            "--tls-cipher-suites": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256",
            "--authorization-offline-authorized-ttl": "24h",
            "--authentication-token-webhook-cache-ttl": "0",
        },
    )
    assert tuned.auth.offline_authorized_ttl == 86400 and tuned.auth.token_webhook_cache_ttl == 0


def test_huge_since_seconds_is_a_client_error_not_a_crash() -> None:
    """Found by the fuzzer: an int64 sinceSeconds overflowed timedelta (a 500)."""
    import datetime as dt

    from vnode.logs.options import parse_log_query

    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_log_query({"sinceSeconds": str((1 << 63) - 1)}, now).since is not None
    with pytest.raises(errors.InvalidInput):
        parse_log_query({"sinceSeconds": "99999999999999999999"}, now)
