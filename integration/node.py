"""Runs a real ``vnode run`` process for integration tests and talks to it as a client would.

The node is a subprocess (``python -m vnode run``) so tests can SIGKILL it and start it again on
the same root directory, exactly as a power cut or an OOM kill would. It gets its own root dir,
manifest dir and pod log dir under the test's temp dir, the harness containerd's endpoint, and a
free loopback port. ``wait_for`` polls a condition with a deadline: the node is another process,
so there is no event to await, only state to observe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 60.0, interval: float = 0.2, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = await probe()
            if result:
                return result
        except (aiohttp.ClientError, OSError, KeyError, IndexError) as exc:
            last_exc = exc
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or probe}: last error {last_exc!r}"
            )
        await asyncio.sleep(interval)


class VnodeProcess:
    """A ``vnode run`` subprocess with its directories, and an HTTPS client for its kubelet API."""

    def __init__(
        self, base: Path, endpoint: str, *, node_name: str = "testnode", extra_args: list[str] | None = None
    ) -> None:
        self.base = base
        self.endpoint = endpoint
        self.node_name = node_name
        self.root_dir = base / "root"
        self.manifests = base / "manifests"
        self.logs_dir = base / "pods-logs"
        self.log_file = base / "vnode.log"
        self.port = free_port()
        self.local_api_port = free_port()
        self.extra_args = extra_args or []
        self.proc: asyncio.subprocess.Process | None = None
        self.manifests.mkdir(parents=True, exist_ok=True)
        self._session: aiohttp.ClientSession | None = None
        self._session_has_cert = False
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        return [
            # Unclosed sockets, transports and files in vnode itself are printed to its log
            # (Python hides ResourceWarning by default); the tests' own process raises them.
            sys.executable, "-W", "default::ResourceWarning", "-m", "vnode", "run",
            f"--hostname-override={self.node_name}",
            f"--root-dir={self.root_dir}",
            f"--pod-manifest-path={self.manifests}",
            f"--pod-logs-dir={self.logs_dir}",
            f"--container-runtime-endpoint={self.endpoint}",
            f"--port={self.port}",
            f"--local-api-port={self.local_api_port}",
            "--healthz-port=0",
            "--file-check-frequency=2s",
            "--node-ip=127.0.0.1",
            "-v=4",
            *self.extra_args,
        ]  # fmt: skip

    async def start(self, *, wait: bool = True) -> None:
        log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args(), stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )
        finally:
            log.close()
        if wait:
            try:
                await wait_for(self._healthy, timeout=30, what="the kubelet API to answer /healthz/ping")
            except BaseException:
                # Not left running (nor its client open) when the start fails: the caller's
                # clean-up only covers a node that started.
                if self.proc.returncode is None:
                    self.proc.send_signal(signal.SIGKILL)
                    await self.proc.wait()
                await self.close()
                raise

    async def _healthy(self) -> bool:
        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"vnode exited with {self.proc.returncode}:\n{self.log_tail()}")
        status, _ = await self.get("/healthz/ping")
        return status == 200

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self.close()

    async def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await self.proc.wait()
        await self.close()
        return code

    async def close(self) -> None:
        """Close the client of the kubelet API (a later request opens a new one), and any
        replaced one still closing."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._closing:
            await asyncio.gather(*self._closing)
            self._closing.clear()

    @property
    def admin_cert(self) -> tuple[Path, Path]:
        """The operator's client certificate the node creates at first start (vnode.security.localca)."""
        return self.root_dir / "pki" / "admin.crt", self.root_dir / "pki" / "admin.key"

    def session(self) -> aiohttp.ClientSession:
        """A client of the kubelet API authenticated with the node's admin certificate (once the
        node has written it: until then a session without one, replaced when it appears)."""
        cert, key = self.admin_cert
        if self._session is not None and not self._session_has_cert and cert.exists():
            stale, self._session = self._session, None
            self._closing.add(asyncio.get_running_loop().create_task(stale.close()))
        if self._session is None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._session_has_cert = cert.exists() and key.exists()
            if self._session_has_cert:
                ctx.load_cert_chain(str(cert), str(key))
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
        return self._session

    async def get(self, path: str, **params: Any) -> tuple[int, bytes]:
        async with self.session().get(self.url + path, params=params or None) as resp:
            return resp.status, await resp.read()

    async def log_containing(
        self, pod: str, container: str, text: bytes, namespace: str = "default"
    ) -> bytes:
        """The container's log once it contains ``text`` (waits for it)."""

        async def probe() -> bytes | None:
            code, body = await self.get(f"/containerLogs/{namespace}/{pod}/{container}")
            return body if code == 200 and text in body else None

        return await wait_for(probe, what=f"{text!r} in the log of {pod}/{container}")

    async def pods(self) -> dict[str, dict[str, Any]]:
        """The node's ``/pods``, keyed by pod name."""
        status, body = await self.get("/pods")
        assert status == 200, body
        return {p["metadata"]["name"]: p for p in json.loads(body)["items"]}

    async def pod(self, name: str) -> dict[str, Any] | None:
        return (await self.pods()).get(name)

    def write_manifest(self, filename: str, *pods: dict[str, Any]) -> Path:
        """Write a manifest atomically (rename), as a configuration tool would."""
        path = self.manifests / filename
        tmp = self.manifests / f".{filename}.tmp"
        tmp.write_text(yaml.safe_dump_all(pods))
        tmp.rename(path)
        return path

    def static_name(self, name: str) -> str:
        return f"{name}-{self.node_name}"

    async def wait_pod(
        self, name: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60.0, what: str = ""
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            pod = await self.pod(self.static_name(name))
            return pod if pod is not None and predicate(pod) else None

        try:
            return await wait_for(probe, timeout=timeout, what=what or f"pod {name}")
        except AssertionError as exc:
            pod = await self.pod(self.static_name(name))
            status = json.dumps((pod or {}).get("status"), indent=1)
            raise AssertionError(f"{exc}\nlast pod status: {status}\nvnode log:\n{self.log_tail()}") from None


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses", []) + pod.get("status", {}).get(
        "initContainerStatuses", []
    )
    for s in statuses:
        if s["name"] == name:
            return dict(s)
    raise KeyError(name)


def is_running(pod: dict[str, Any], *names: str) -> bool:
    try:
        return pod["status"].get("phase") == "Running" and all(
            "running" in container_status(pod, n)["state"] for n in names
        )
    except KeyError:
        return False


@contextlib.asynccontextmanager
async def running_node(base: Path, endpoint: str, **kwargs: Any) -> AsyncIterator[VnodeProcess]:
    """A started ``VnodeProcess`` that is terminated (SIGTERM, containers kept) on exit."""
    proc = VnodeProcess(base, endpoint, **kwargs)
    await proc.start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.returncode is None:
            await proc.terminate()
        await proc.close()  # the test may have used the client after stopping the node


def busybox_pod(name: str, command: str, **spec: Any) -> dict[str, Any]:
    """A hostNetwork pod running ``sh -c command`` in the harness's busybox image."""
    container = {
        "name": spec.pop("container_name", "main"),
        "image": "docker.io/library/busybox:1.35",
        "command": ["sh", "-c", command],
    }
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"hostNetwork": True, "terminationGracePeriodSeconds": 2, "containers": [container], **spec},
    }
