"""The four probe handlers, with kubelet's rules and messages.

Each returns ``(Result, output)``; output is what a failure's ``Unhealthy`` Event says. A probe
that cannot even be attempted (a named port the container does not declare, a bad host) raises
``ProbeError``: kubelet retries it, records ``... probe errored ...`` and counts it toward neither
threshold. ``Warning`` is a success that deserves a ``ProbeWarning`` Event (a redirect not
followed).

- exec: CRI ExecSync with the probe's timeout; exit 0 succeeds; output (stdout then stderr)
  capped at 10 KiB; a timeout is a failure (``command "<command>" timed out``).
- httpGet: GET on ``scheme://host:port/path`` (host defaults to the pod IP), ``httpHeaders``
  added, ``User-Agent: kube-probe/<major>.<minor>`` and ``Accept: */*`` unless given; 200-399
  succeed; redirects followed on the same host (at most 10), a redirect elsewhere ends the probe as
  a success with a warning; TLS is not verified; at most 10 KiB of the body is read.
- tcpSocket: a connection within the timeout succeeds.
- grpc: ``grpc.health.v1.Health/Check`` with ``service``; SERVING succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import grpc

from vnode import errors
from vnode.kube.envvars import expand
from vnode.probes.spec import ProbeSpec, Result

MAX_OUTPUT = 10 * 1024
MAX_REDIRECTS = 10
KUBE_VERSION = "1.37"  # the Kubernetes minor vnode's kubelet API reports (User-Agent kube-probe/<it>)


class ProbeError(errors.VnodeError):
    """The probe could not be attempted; not counted as a failure."""


@dataclass(frozen=True)
class Outcome:
    result: Result
    output: str
    warning: bool = False  # a success kubelet reports with a ProbeWarning Event


@dataclass(frozen=True)
class Container:
    """What a handler needs of the probed container."""

    container_id: str
    pod_ip: str
    spec: dict[str, Any]  # the container's spec (ports by name, env for exec's $(VAR))


ExecSync = Callable[[str, list[str], int], Awaitable[tuple[bytes, bytes, int]]]


def resolve_port(port: Any, container: dict[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) and not isinstance(port, bool):
        number = port
    elif isinstance(port, str) and port.isdigit():
        number = int(port)
    else:
        named = [p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == port]
        if not named:
            raise ProbeError(f"couldn't find port {port!r} in {container.get('name', '')}")
        number = int(named[0])
    if not 0 < number < 65536:
        raise ProbeError(f"invalid port number: {number}")
    return number


def expand_command(command: list[str], container: dict[str, Any]) -> list[str]:
    """``$(VAR)`` of the container's static env values, as kubelet expands an exec probe's command."""
    env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or [] if "value" in e}
    return [expand(arg, env) for arg in command]


class Handlers:
    """The probes' I/O; one HTTP session for all of them (owned here, closed by ``close``)."""

    def __init__(self, exec_sync: ExecSync) -> None:
        self.exec_sync = exec_sync
        self._session: aiohttp.ClientSession | None = None
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._tls = insecure

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self, spec: ProbeSpec, target: Container) -> Outcome:
        if spec.handler == "exec":
            return await self._exec(spec, target)
        if spec.handler == "httpGet":
            return await self._http(spec, target)
        if spec.handler == "tcpSocket":
            return await self._tcp(spec, target)
        return await self._grpc(spec, target)

    async def _exec(self, spec: ProbeSpec, target: Container) -> Outcome:
        command = expand_command([str(a) for a in spec.action.get("command") or []], target.spec)
        try:
            stdout, stderr, code = await self.exec_sync(target.container_id, command, spec.timeout)
        except errors.VnodeError as exc:
            text = str(exc).lower()
            if "timeout" in text or "deadline exceeded" in text:  # containerd: "timeout 1s exceeded"
                # kubelet's text, Go's %q of the joined command (JSON quoting is the same for it)
                return Outcome(Result.FAILURE, f"command {json.dumps(' '.join(command))} timed out")
            raise ProbeError(str(exc)) from exc
        output = (stdout + stderr)[:MAX_OUTPUT].decode(errors="replace")
        return Outcome(Result.SUCCESS if code == 0 else Result.FAILURE, output)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls, force_close=True),
                auto_decompress=True,
            )
        return self._session

    async def _http(self, spec: ProbeSpec, target: Container) -> Outcome:
        action = spec.action
        port = resolve_port(action.get("port"), target.spec)
        scheme = str(action.get("scheme") or "HTTP").lower()
        host = str(action.get("host") or target.pod_ip)
        path = str(action.get("path") or "/")
        if not path.startswith("/"):
            path = "/" + path
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        url = f"{scheme}://{netloc}{path}"
        headers: dict[str, str] = {}
        for header in action.get("httpHeaders") or []:
            headers[str(header.get("name", ""))] = str(header.get("value", ""))
        lower = {k.lower() for k in headers}
        if "user-agent" not in lower:
            headers["User-Agent"] = f"kube-probe/{KUBE_VERSION}"
        if "accept" not in lower:
            headers["Accept"] = "*/*"
        headers = {k: v for k, v in headers.items() if not (k.lower() == "accept" and v == "")}
        first_host = urlsplit(url).hostname
        try:
            async with asyncio.timeout(spec.timeout):
                for _ in range(MAX_REDIRECTS + 1):
                    async with self._client().get(url, headers=headers, allow_redirects=False) as resp:
                        body = (await resp.content.read(MAX_OUTPUT)).decode(errors="replace")
                        location = resp.headers.get("Location")
                        if 300 <= resp.status < 400 and location:
                            following = urljoin(url, location)
                            if urlsplit(following).hostname == first_host:
                                url = following
                                continue
                            return Outcome(
                                Result.SUCCESS,
                                f"Probe terminated redirects, Response body: {body}",
                                warning=True,
                            )
                        if 200 <= resp.status < 400:
                            return Outcome(Result.SUCCESS, body)
                        return Outcome(Result.FAILURE, f"HTTP probe failed with statuscode: {resp.status}")
                return Outcome(Result.FAILURE, f'Get "{url}": stopped after {MAX_REDIRECTS} redirects')
        except TimeoutError:
            return Outcome(
                Result.FAILURE,
                f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting headers)',
            )
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome(Result.FAILURE, f'Get "{url}": {_describe(exc)}')

    async def _tcp(self, spec: ProbeSpec, target: Container) -> Outcome:
        port = resolve_port(spec.action.get("port"), target.spec)
        host = str(spec.action.get("host") or target.pod_ip)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            async with asyncio.timeout(spec.timeout):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            return Outcome(Result.FAILURE, f"dial tcp {address}: i/o timeout")
        except OSError as exc:
            return Outcome(Result.FAILURE, f"dial tcp {address}: {_describe(exc)}")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return Outcome(Result.SUCCESS, "")

    async def _grpc(self, spec: ProbeSpec, target: Container) -> Outcome:
        port = resolve_port(spec.action.get("port"), target.spec)
        address = f"{target.pod_ip}:{port}"
        service = str(spec.action.get("service") or "")
        request = _health_request(service)
        async with grpc.aio.insecure_channel(
            address, options=[("grpc.primary_user_agent", f"kube-probe/{KUBE_VERSION}")]
        ) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            try:
                reply = await check(request, timeout=spec.timeout)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    return Outcome(
                        Result.FAILURE,
                        "error: this server does not implement the grpc health protocol "
                        f"(grpc.health.v1.Health): {exc.details()}",
                    )
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return Outcome(
                        Result.FAILURE, f"timeout: health rpc did not complete within {spec.timeout}s"
                    )
                if code == grpc.StatusCode.UNAVAILABLE:
                    return Outcome(
                        Result.FAILURE, f'error: failed to connect service at "{address}": {exc.details()}'
                    )
                return Outcome(Result.FAILURE, f"error: health rpc probe failed: {exc.details()}")
        status = _health_status(reply)
        if status != "SERVING":
            return Outcome(Result.FAILURE, f'service unhealthy (responded with "{status}")')
        return Outcome(Result.SUCCESS, "service healthy")


# grpc.health.v1 HealthCheckRequest {string service = 1;} and HealthCheckResponse
# {ServingStatus status = 1;}: two one-field messages, encoded here. grpcio-health-checking has
# them generated, but installing it upgrades protobuf past the ~=6.31 the CRI stubs pin (tried:
# pip moved protobuf to 7.x and broke container-runtime-interface-api).
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _health_request(service: str) -> bytes:
    data = service.encode()
    return (b"\x0a" + _varint(len(data)) + data) if data else b""


def _health_status(reply: bytes) -> str:
    pos, status = 0, 0
    while pos < len(reply):
        key, pos = _read_varint(reply, pos)
        if key & 7 == 0:
            value, pos = _read_varint(reply, pos)
            if key >> 3 == 1:
                status = value
        elif key & 7 == 2:
            length, pos = _read_varint(reply, pos)
            pos += length
        else:
            break
    return SERVING_STATUS.get(status, str(status))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return value, pos


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return "connect: connection refused"
    return str(exc) or type(exc).__name__
