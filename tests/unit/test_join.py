"""Join and rotation pieces: the JWS, CA pins, token and pin parsing, file layout, the kubeconfig
it writes, the rotation deadline, and the live certificate swap with an open stream."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import random
import ssl
import stat
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from vnode import errors
from vnode.clients.kubeconfig import load_access
from vnode.security import bootstrap, keys
from vnode.security.files import write_file
from vnode.security.rotation import rotation_deadline

# RFC 7515-style HS256 JWS with a kid, from jose4j's tests (an independent JOSE implementation):
# header {"alg":"HS256","kid":"9er"}, payload "You'll get nothing, and like it!".
JOSE4J_KEY = base64.urlsafe_b64decode("Ul3CckPpDfGjBzSsXCoQSvX3L0qVcAku2hW9WU-ccSs=")
JOSE4J_JWS = (
    "eyJhbGciOiJIUzI1NiIsImtpZCI6IjllciJ9."
    "WW91J2xsIGdldCBub3RoaW5nLCBhbmQgbGlrZSBpdCE."
    "45s_xV_ol7JBwVcTPbWbaYT5i4mb7j27lEhi_bxpExw"
)


def test_detached_signature_matches_an_independent_jose_implementation() -> None:
    header, _, signature = JOSE4J_JWS.split(".")
    payload = "You'll get nothing, and like it!"
    assert bootstrap.detached_signature(payload, "9er", JOSE4J_KEY) == f"{header}..{signature}"


def test_signature_check_rejects_another_secret_or_payload() -> None:
    good = bootstrap.detached_signature("kubeconfig", "abcdef", "0123456789abcdef")
    assert bootstrap.signature_valid("kubeconfig", good, "abcdef", "0123456789abcdef")
    assert not bootstrap.signature_valid("kubeconfig", good, "abcdef", "0123456789abcdee")
    assert not bootstrap.signature_valid("kubeconfig ", good, "abcdef", "0123456789abcdef")
    assert not bootstrap.signature_valid("kubeconfig", good, "abcdeg", "0123456789abcdef")


@pytest.mark.parametrize(
    "token", ["abcdef.0123456789abcde", "ABCDEF.0123456789abcdef", "abcdef0123456789abcdef", ""]
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(errors.ConfigError, match="--token"):
        bootstrap.parse_token(token)


def test_pins_are_normalised_and_checked() -> None:
    digest = "AB" * 32
    assert bootstrap.parse_pins([f"SHA256:{digest}"]) == (f"sha256:{digest.lower()}",)
    assert len(bootstrap.parse_pins([f"sha256:{'a' * 64},sha256:{'b' * 64}"])) == 2
    for bad in ("sha256:abc", f"md5:{'a' * 64}", "a" * 64):
        with pytest.raises(errors.ConfigError, match="discovery-token-ca-cert-hash"):
            bootstrap.parse_pins([bad])


def test_ca_pin_is_the_one_openssl_computes(tmp_path: Path) -> None:
    """kubeadm's documented recipe, run with the real openssl, gives the same pin."""
    cert, _ = keys.new_ca("pin-test", dt.timedelta(days=1))
    (tmp_path / "ca.crt").write_bytes(cert)
    pubkey = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "ca.crt"), "-pubkey", "-noout"],
        capture_output=True,
        check=True,
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey, capture_output=True, check=True
    )
    digest = subprocess.run(["sha256sum"], input=der.stdout, capture_output=True, check=True).stdout.split()[
        0
    ]
    assert keys.pins(cert) == [f"sha256:{digest.decode()}"]


def test_client_csr_has_the_node_subject_and_no_sans() -> None:
    from cryptography import x509

    _, pem = keys.new_csr("system:node:edge1", ["system:nodes"])
    csr = x509.load_pem_x509_csr(pem)
    assert csr.subject.rfc4514_string() == "CN=system:node:edge1,O=system:nodes"
    with pytest.raises(x509.ExtensionNotFound):
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_install_pair_is_private_and_switches_the_current_link(tmp_path: Path) -> None:
    ca, ca_key = keys.new_ca("ca", dt.timedelta(days=1))
    first = keys.issue(ca, ca_key, "a", ["g"], dt.timedelta(hours=1))
    current = bootstrap.install_pair(tmp_path, "client", *first)
    assert stat.S_IMODE(current.resolve().stat().st_mode) == 0o600
    assert first[0].strip() in current.read_bytes() and first[1] in current.read_bytes()
    (tmp_path / current.resolve().name).rename(tmp_path / "kubelet-client-2000-01-01-00-00-00.pem")
    second = keys.issue(ca, ca_key, "b", ["g"], dt.timedelta(hours=1))
    current = bootstrap.install_pair(tmp_path, "client", *second)
    assert second[0].strip() in current.read_bytes()


def test_written_kubeconfig_lists_every_master_and_loads_the_client_pair(tmp_path: Path) -> None:
    ca, ca_key = keys.new_ca("ca", dt.timedelta(days=1))
    current = bootstrap.install_pair(
        tmp_path, "client", *keys.issue(ca, ca_key, "n", ["g"], dt.timedelta(hours=1))
    )
    servers = ("https://10.0.0.1:6443", "https://10.0.0.2:6443")
    path = tmp_path / "kubelet.conf"
    write_file(path, bootstrap.kubeconfig_text(servers, ca, current).encode())
    access = load_access(path, None)
    assert access.servers == servers and access.ssl_context is not None and access.ca_hash


def test_rotation_deadline_is_70_to_90_percent_of_the_lifetime() -> None:
    rng = random.Random(1)
    deadlines = [rotation_deadline(1000.0, 2000.0, rng) for _ in range(2000)]
    assert 1700 <= min(deadlines) < 1710 and 1890 < max(deadlines) <= 1900


async def test_swapping_the_serving_pair_keeps_open_streams_and_serves_new_connections(
    tmp_path: Path,
) -> None:
    """``load_cert_chain`` on the live context: new handshakes see the new certificate, an open
    streaming response on an old connection keeps flowing (OpenSSL copies the pair per connection)."""
    ca, ca_key = keys.new_ca("ca", dt.timedelta(days=1))
    pairs = []
    for name in ("old", "new"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        issuer = x509.load_pem_x509_certificate(ca)
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name.from_rfc4514_string(f"CN={name}"))
            .issuer_name(issuer.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
            .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(serialization.load_pem_private_key(ca_key, None), hashes.SHA256())  # type: ignore[arg-type]
        )  # fmt: skip
        pairs.append(
            bootstrap.install_pair(
                tmp_path, name, cert.public_bytes(serialization.Encoding.PEM), keys.key_pem(key)
            )
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pairs[0]))
    ticks = asyncio.Queue[int]()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while tick := await ticks.get():  # 0 ends the stream
            await response.write(f"{tick}\n".encode())
        return response

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/stream", stream)
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    client_context = ssl.create_default_context(cadata=ca.decode())
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_context, force_close=True)
            ) as session,
            session.get(f"https://localhost:{port}/stream") as old,
        ):
            assert old.connection is not None and old.connection.transport is not None
            transport = old.connection.transport
            ticks.put_nowait(1)
            assert await old.content.readline() == b"1\n"

            context.load_cert_chain(str(pairs[1]))  # the swap
            _, writer = await asyncio.open_connection("localhost", port, ssl=client_context)
            subject = writer.get_extra_info("peercert")["subject"]
            writer.close()
            await writer.wait_closed()
            assert (("commonName", "new"),) in subject
            async with session.get(f"https://localhost:{port}/hello") as fresh:
                assert await fresh.text() == "hello"

            ticks.put_nowait(2)
            assert await asyncio.wait_for(old.content.readline(), 5) == b"2\n"
            assert (("commonName", "old"),) in transport.get_extra_info("peercert")["subject"]
    finally:
        ticks.put_nowait(0)  # the handler is not cancelled by the runner's cleanup
        await runner.cleanup()
