"""The API client and kubeconfig loading, against real in-process aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vnode import errors
from vnode.clients import kubeconfig
from vnode.clients.kubeconfig import ClusterAccess, load_access
from vnode.clients.masters import Masters

NODE = {"kind": "Node", "metadata": {"name": "x"}}
FAST = 0.5  # seconds: the per-request deadline against a master that never answers


class Master:
    """One fake API server: answers every path with ``status`` and ``body``, and records the paths."""

    def __init__(self, status: int = 200, body: bytes = json.dumps(NODE).encode()) -> None:
        self.status = status
        self.body = body
        self.hits: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path_qs)
        return web.Response(status=self.status, body=self.body, content_type="application/json")


class Servers:
    """Starts servers and sockets on 127.0.0.1 with port 0; ``close()`` stops them all."""

    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []
        self.sockets: list[socket.socket] = []

    async def start(
        self,
        handler: Callable[[web.Request], Any],
        ssl_context: ssl.SSLContext | None = None,
    ) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        self.runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]  # the bound port of the site's server socket
        return f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    async def master(self, master: Master) -> str:
        return await self.start(master.handle)

    def silent(self) -> str:
        """A socket that accepts connections (the kernel's backlog) and never answers."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sockets.append(sock)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def refusing(self) -> str:
        """A bound port that does not listen: every connection is refused."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sockets.append(sock)
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    started = Servers()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def masters_for() -> AsyncIterator[Callable[..., Masters]]:
    made: list[Masters] = []

    def make(*servers: str, ssl_context: ssl.SSLContext | None = None) -> Masters:
        masters = Masters(ClusterAccess(servers=servers, ssl_context=ssl_context))
        made.append(masters)
        return masters

    try:
        yield make
    finally:
        for masters in made:
            await masters.close()


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.WARNING, logger="vnode.clients.masters")
    yield caplog


# --- failover -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["500", "garbage", "silent"])
async def test_a_broken_master_is_skipped(
    servers: Servers, masters_for: Callable[..., Masters], warnings: pytest.LogCaptureFixture, bad: str
) -> None:
    good = Master()
    if bad == "500":
        broken = await servers.master(Master(500, b'{"message": "etcd is down"}'))
    elif bad == "garbage":
        broken = await servers.master(Master(200, b"garbage"))
    else:
        broken = servers.silent()
    good_url = await servers.master(good)
    masters = masters_for(broken, good_url)

    assert await masters.request("GET", "/api/v1/nodes/x", timeout=FAST) == NODE
    assert masters.server == good_url
    assert good.hits == ["/api/v1/nodes/x"]
    messages = [r.getMessage() for r in warnings.records]
    assert len(messages) == 1
    assert messages[0].startswith(f"master {broken} failed")
    assert messages[0].endswith(f"active master is now {good_url}")
    # The active master is used directly from now on.
    assert await masters.request("GET", "/api/v1/nodes/x", timeout=FAST) == NODE
    assert len(good.hits) == 2
    assert len(warnings.records) == 1


async def test_three_broken_masters_before_a_good_one(
    servers: Servers, masters_for: Callable[..., Masters], warnings: pytest.LogCaptureFixture
) -> None:
    failing, garbage, good = Master(500), Master(200, b"garbage"), Master()
    bad = [await servers.master(failing), await servers.master(garbage), servers.silent()]
    good_url = await servers.master(good)
    masters = masters_for(*bad, good_url)

    assert await masters.request("GET", "/api/v1/nodes/x", timeout=FAST) == NODE
    assert masters.server == good_url
    assert (failing.hits, garbage.hits, good.hits) == (["/api/v1/nodes/x"],) * 3
    messages = [r.getMessage() for r in warnings.records]
    assert [m.split(" failed")[0] for m in messages] == [f"master {url}" for url in bad]
    assert messages[-1].endswith(f"active master is now {good_url}")


async def test_unavailable_when_every_master_fails_and_none_is_dropped(
    servers: Servers, masters_for: Callable[..., Masters]
) -> None:
    sick = Master(503, b'{"message": "apiserver is starting"}')
    sick_url = await servers.master(sick)
    refusing = servers.refusing()
    masters = masters_for(refusing, sick_url)

    for attempt in (1, 2):
        with pytest.raises(errors.Unavailable) as info:
            await masters.request("GET", "/api/v1/nodes/x", timeout=FAST)
        message = str(info.value)
        assert message.startswith("GET /api/v1/nodes/x: every master failed: ")
        assert f"{refusing}: " in message
        assert f"{sick_url}: _ServerError: 503 apiserver is starting" in message
        assert len(sick.hits) == attempt  # the failed masters are still tried on every call

    sick.status, sick.body = 200, b'{"kind": "Node", "metadata": {"name": "back"}}'
    assert await masters.request("GET", "/api/v1/nodes/x", timeout=FAST) == {
        "kind": "Node",
        "metadata": {"name": "back"},
    }
    assert masters.server == sick_url


# --- 4xx ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, errors.NotFound),
        (409, errors.Conflict),
        (410, errors.Expired),
        (422, errors.Unprocessable),
        (400, errors.InvalidInput),
    ],
)
async def test_a_4xx_is_the_answer_and_does_not_fail_over(
    servers: Servers,
    masters_for: Callable[..., Masters],
    warnings: pytest.LogCaptureFixture,
    status: int,
    error: type[errors.VnodeError],
) -> None:
    refusing, second = Master(status, b'{"kind": "Status", "message": "nodes \\"x\\" nope"}'), Master()
    first_url = await servers.master(refusing)
    masters = masters_for(first_url, await servers.master(second))

    with pytest.raises(errors.VnodeError) as info:
        await masters.request("POST", "/api/v1/nodes/x", body={"a": 1})
    assert type(info.value) is error
    assert str(info.value).endswith(f'POST /api/v1/nodes/x: {status} nodes "x" nope')
    assert masters.server == first_url
    assert (len(refusing.hits), second.hits, warnings.records) == (1, [], [])


# --- watch ----------------------------------------------------------------------------------------

EVENTS = [
    {"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "5"}}},
    {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "7"}}},
]


def streaming(lines: list[bytes], seen: list[dict[str, str]]) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.query))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for line in lines:
            await resp.write(line)
        await resp.write_eof()
        return resp

    return handle


async def test_watch_yields_the_streamed_events(
    servers: Servers, masters_for: Callable[..., Masters]
) -> None:
    seen: list[dict[str, str]] = []
    lines = [json.dumps(EVENTS[0]).encode() + b"\n", b"\n", json.dumps(EVENTS[1]).encode() + b"\n"]
    masters = masters_for(await servers.start(streaming(lines, seen)))

    got = [event async for event in masters.watch("/api/v1/pods", {"resourceVersion": "4"})]
    assert got == EVENTS
    assert seen == [{"resourceVersion": "4", "watch": "true", "allowWatchBookmarks": "true"}]


async def test_a_garbage_watch_line_is_unavailable_and_fails_over(
    servers: Servers, masters_for: Callable[..., Masters], warnings: pytest.LogCaptureFixture
) -> None:
    seen: list[dict[str, str]] = []
    lines = [json.dumps(EVENTS[0]).encode() + b"\n", b"garbage\n", json.dumps(EVENTS[1]).encode() + b"\n"]
    broken = await servers.start(streaming(lines, seen))
    good = await servers.master(Master())
    masters = masters_for(broken, good)

    got = []
    with pytest.raises(errors.Unavailable) as info:
        async for event in masters.watch("/api/v1/pods", {}):
            got.append(event)
    assert got == EVENTS[:1]
    assert str(info.value).startswith(f"watch /api/v1/pods on {broken}: JSONDecodeError")
    assert masters.server == good
    assert warnings.records[-1].getMessage().endswith(f"active master is now {good}")


# --- kubeconfig -----------------------------------------------------------------------------------


def write_kubeconfig(path: Path, current: str, contexts: dict[str, tuple[str, str]], **clusters: Any) -> Path:
    """``contexts``: name -> (cluster, user), in file order; ``clusters``: name -> cluster entry."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": current,
                "contexts": [
                    {"name": name, "context": {"cluster": cluster, "user": user}}
                    for name, (cluster, user) in contexts.items()
                ],
                "clusters": [{"name": name, "cluster": entry} for name, entry in clusters.items()],
                "users": [{"name": "node", "user": {"token": "node-token"}}, {"name": "admin", "user": {}}],
            },
            sort_keys=False,
        )
    )
    return path


def test_kubeconfig_lists_the_masters_of_the_current_user(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        "b",
        {
            "ops": ("other", "admin"),  # another user's cluster: left out
            "a": ("ka", "node"),
            "b": ("kb", "node"),  # current: first
            "b-again": ("kb", "node"),  # the same cluster twice
            "c": ("kc", "node"),  # another entry for ka's server
            "d": ("kd", "node"),
        },
        other={"server": "http://10.0.0.9:6443"},
        ka={"server": "http://10.0.0.1:6443"},
        kb={"server": "http://10.0.0.2:6443/"},
        kc={"server": "http://10.0.0.1:6443"},
        kd={"server": "http://10.0.0.4:6443"},
    )
    access = load_access(path, None)
    assert access.servers == ("http://10.0.0.2:6443", "http://10.0.0.1:6443", "http://10.0.0.4:6443")
    assert access.token == "node-token"
    assert access.ssl_context is None  # only http:// masters


def test_master_flag_replaces_the_kubeconfig_servers(tmp_path: Path) -> None:
    one, _ = make_ca("ca-one")
    (tmp_path / "ca.crt").write_bytes(pem(one))
    path = write_kubeconfig(
        tmp_path / "config",
        "a",
        {"a": ("ka", "node"), "b": ("kb", "node")},
        ka={"server": "https://10.0.0.1:6443", "certificate-authority": "ca.crt"},
        kb={"server": "https://10.0.0.2:6443"},
    )
    access = load_access(path, "https://m1:6443, https://m2:6443/")
    assert access.servers == ("https://m1:6443", "https://m2:6443")
    assert access.token == "node-token"
    assert access.ssl_context is not None
    assert subjects(access.ssl_context) >= {"ca-one"}


def test_a_context_naming_a_missing_cluster_is_a_config_error(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        "a",
        {"a": ("ka", "node"), "b": ("ghost", "node")},
        ka={"server": "http://10.0.0.1:6443"},
    )
    with pytest.raises(errors.ConfigError) as info:
        load_access(path, None)
    assert info.value.path == "--kubeconfig"
    assert info.value.reason == f"{path}: no cluster named 'ghost'"


def test_a_cluster_without_a_server_is_a_config_error(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        "a",
        {"a": ("ka", "node"), "b": ("kb", "node")},
        ka={"server": "http://10.0.0.1:6443"},
        kb={"certificate-authority-data": "Zm9v"},
    )
    with pytest.raises(errors.ConfigError) as info:
        load_access(path, None)
    assert (info.value.path, info.value.reason) == ("--kubeconfig", f"{path}: cluster 'kb' has no server")


def test_disagreeing_insecure_skip_tls_verify_is_a_config_error(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        "a",
        {"a": ("ka", "node"), "b": ("kb", "node")},
        ka={"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True},
        kb={"server": "https://10.0.0.2:6443"},
    )
    with pytest.raises(errors.ConfigError) as info:
        load_access(path, None)
    assert info.value.reason.startswith(f"{path}: the clusters of user 'node' disagree on")


def test_every_ca_of_the_masters_is_loaded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one, _ = make_ca("ca-one")
    two, _ = make_ca("ca-two")
    (tmp_path / "one.crt").write_bytes(pem(one))
    path = write_kubeconfig(
        tmp_path / "config",
        "a",
        {"a": ("ka", "node"), "b": ("kb", "node"), "c": ("kc", "node")},
        ka={"server": "https://10.0.0.1:6443", "certificate-authority": "one.crt"},
        kb={"server": "https://10.0.0.2:6443", "certificate-authority-data": b64(pem(two))},
        kc={"server": "https://10.0.0.3:6443", "certificate-authority-data": b64(pem(one))},  # ka's CA
    )
    loads: list[str] = []

    class Counting(ssl.SSLContext):
        def load_verify_locations(self, cafile: Any = None, capath: Any = None, cadata: Any = None) -> None:
            loads.append(Path(cafile).read_text())
            super().load_verify_locations(cafile, capath, cadata)

    monkeypatch.setattr(kubeconfig.ssl, "create_default_context", lambda: Counting(ssl.PROTOCOL_TLS_CLIENT))
    access = load_access(path, None)
    assert access.ssl_context is not None
    assert subjects(access.ssl_context) == {"ca-one", "ca-two"}
    assert loads == [pem(one).decode(), pem(two).decode()]


def test_a_bad_ca_is_a_config_error(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "config",
        "a",
        {"a": ("ka", "node"), "b": ("kb", "node")},
        ka={"server": "https://10.0.0.1:6443"},
        kb={"server": "https://10.0.0.2:6443", "certificate-authority": "missing.crt"},
    )
    with pytest.raises(errors.ConfigError) as info:
        load_access(path, None)
    assert info.value.reason.startswith(f"{path}: cannot load its certificates: ")
    assert "missing.crt" in info.value.reason


def test_http_masters_need_no_tls(tmp_path: Path) -> None:
    assert load_access(None, "http://10.0.0.1:8080,http://10.0.0.2:8080").ssl_context is None
    path = write_kubeconfig(
        tmp_path / "config",
        "a",
        {"a": ("ka", "node"), "b": ("kb", "node")},
        ka={"server": "http://10.0.0.1:8080"},
        kb={"server": "http://10.0.0.2:8080"},
    )
    access = load_access(path, None)
    assert (access.servers, access.ssl_context) == (("http://10.0.0.1:8080", "http://10.0.0.2:8080"), None)


async def test_failover_between_masters_signed_by_different_cas(
    tmp_path: Path, servers: Servers, masters_for: Callable[..., Masters]
) -> None:
    """Each master's certificate is checked against its own cluster's CA, all in the one TLS context."""
    urls = []
    for number, master in enumerate([Master(500), Master()]):
        ca, ca_key = make_ca(f"ca-{number}")
        cert, key = issue(ca, ca_key)
        (tmp_path / f"ca{number}.crt").write_bytes(pem(ca))
        (tmp_path / f"server{number}.crt").write_bytes(pem(cert))
        (tmp_path / f"server{number}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(tmp_path / f"server{number}.crt", tmp_path / f"server{number}.key")
        urls.append(await servers.start(master.handle, ssl_context=tls))
    path = write_kubeconfig(
        tmp_path / "config",
        "first",
        {"first": ("k0", "node"), "second": ("k1", "node")},
        k0={"server": urls[0], "certificate-authority": "ca0.crt"},
        k1={"server": urls[1], "certificate-authority-data": b64((tmp_path / "ca1.crt").read_bytes())},
    )
    access = load_access(path, None)
    masters = masters_for(*access.servers, ssl_context=access.ssl_context)
    assert await masters.request("GET", "/api/v1/nodes/x") == NODE
    assert masters.server == urls[1]


# --- certificates ---------------------------------------------------------------------------------


def make_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[x509.Certificate, Any]:
    """A server certificate for 127.0.0.1 signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def subjects(context: ssl.SSLContext) -> set[str]:
    """The common names of the CAs ``context`` trusts (the system's included)."""
    names = set()
    for cert in context.get_ca_certs():
        for rdn in cert["subject"]:
            for key, value in rdn:
                if key == "commonName":
                    names.add(value)
    return names
