"""The kubelet HTTP API (aiohttp): health checks, ``/pods``, ``/containerLogs`` and the stats and
metrics endpoints (``vnode.api.stats``).

The handlers see only the narrow protocols of ``vnode.provider.protocols``, so any pod provider
serves the same API. Errors are vnode errors mapped through ``errors.http_status``; the body is
the plain-text reason, as kubelet writes it. A method an endpoint does not take gets 405 with
``Allow``: GET (and HEAD) everywhere, GET and POST for the streaming endpoints (``vnode.api.streams``,
registered when the provider has that capability), POST only for ``/run``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from vnode import errors
from vnode.logs.options import parse_log_query
from vnode.logs.reader import read_log
from vnode.provider.protocols import HealthCheck, LogLocator, PodLister

if TYPE_CHECKING:
    from vnode.api.stats import StatsHandlers
    from vnode.api.streams import StreamHandlers

log = logging.getLogger(__name__)

T = TypeVar("T")
ALLOWED = "GET, HEAD"
# Methods by first path segment where they differ from ALLOWED.
_METHODS = {"exec": "GET, POST", "attach": "GET, POST", "portForward": "GET, POST", "run": "POST"}


@dataclass
class KubeletHandlers:
    """What the API serves from; ``logs=None`` leaves ``/containerLogs`` out (the healthz port)."""

    pods: PodLister | None
    logs: LogLocator | None
    health_checks: dict[str, HealthCheck] = field(default_factory=dict)
    streams: StreamHandlers | None = None
    stats: StatsHandlers | None = None  # /stats/summary, /metrics/resource, /metrics
    guard: Any = None  # authn/authz middleware (vnode.api.guard); None on the plain healthz port


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text if text.endswith("\n") else text + "\n", headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """vnode errors become their status code with the reason; bugs become a logged 500."""
    allowed = _METHODS.get(request.path.lstrip("/").split("/", 1)[0], ALLOWED)
    if request.method not in allowed.split(", "):
        return _text(405, f"method {request.method} is not allowed", Allow=allowed)
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException:
        raise
    except errors.TooMany as exc:
        return _text(429, str(exc), **{"Retry-After": "60"})
    except errors.VnodeError as exc:
        return _text(errors.http_status(exc), str(exc))
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _text(500, "internal error")


class KubeletApp:
    """The route table over ``KubeletHandlers``."""

    def __init__(self, handlers: KubeletHandlers) -> None:
        self.handlers = handlers
        guard = [handlers.guard] if handlers.guard is not None else []
        self.app = web.Application(middlewares=[*guard, _errors], handler_args={"max_field_size": 16384})
        routes = [
            web.route("*", "/healthz", self.healthz),
            web.route("*", "/healthz/{check}", self.healthz_one),
        ]
        if handlers.pods is not None:
            routes.append(web.route("*", "/pods", self.pods))
        if handlers.logs is not None:
            routes.append(web.route("*", "/containerLogs/{namespace}/{pod}/{container}", self.container_logs))
        if handlers.streams is not None:
            routes += handlers.streams.routes()
        if handlers.stats is not None:
            routes += handlers.stats.routes()
        self.app.add_routes(routes)

    async def _run_checks(self, names: list[str]) -> list[tuple[str, str | None]]:
        results: list[tuple[str, str | None]] = []
        for name in names:
            try:
                await self.handlers.health_checks[name]()
                results.append((name, None))
            except Exception as exc:  # a check reports any failure as unhealthy, with its reason
                results.append((name, str(exc) or type(exc).__name__))
        return results

    async def healthz(self, request: web.Request) -> web.Response:
        """All checks; ``?verbose`` lists them, as Kubernetes' healthz handler does."""
        results = await self._run_checks(list(self.handlers.health_checks))
        failed = [r for r in results if r[1] is not None]
        verbose = "verbose" in request.query
        if not failed and not verbose:
            return web.Response(text="ok")  # exactly kubelet's body
        lines = []
        for name, problem in results:
            if problem is None:
                lines.append(f"[+]{name} ok")
            else:
                lines.append(f"[-]{name} failed: {problem if verbose else 'reason withheld'}")
                log.info("healthz check %s failed: %s", name, problem)
        lines.append("healthz check failed" if failed else "healthz check passed")
        return _text(500 if failed else 200, "\n".join(lines))

    async def healthz_one(self, request: web.Request) -> web.Response:
        name = request.match_info["check"]
        if name not in self.handlers.health_checks:
            raise errors.NotFound(f"no health check named {name!r}")
        ((_, problem),) = await self._run_checks([name])
        if problem is None:
            return web.Response(text="ok")
        return _text(500, f"internal server error: {problem}")

    async def pods(self, request: web.Request) -> web.Response:
        assert self.handlers.pods is not None
        body = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": self.handlers.pods.list_pods(),
        }
        return web.json_response(body)

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        """kubelet's getContainerLogs: validate the query, find the file, stream it."""
        assert self.handlers.logs is not None
        info = request.match_info
        options = parse_log_query(request.query, datetime.now(tz=UTC))
        target = await self.handlers.logs.locate_log(
            info["namespace"], info["pod"], info["container"], options.previous
        )
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        prepared = False

        async def write(data: bytes) -> None:
            nonlocal prepared
            if not prepared:
                await response.prepare(request)
                prepared = True
            await response.write(data)

        try:
            await while_connected(request, read_log(target, options, write))
        except errors.VnodeError:
            if prepared:  # headers are gone: end the stream where it is
                log.warning(
                    "log stream of %s/%s/%s ended early", info["namespace"], info["pod"], info["container"]
                )
                return response
            raise
        except ConnectionResetError:
            return response
        if not prepared:
            await response.prepare(request)
        await response.write_eof()
        return response


CLIENT_CHECK = 5.0  # seconds between checks that a silent stream's client is still there


async def while_connected(request: web.Request, work: Awaitable[T]) -> T:
    """``work``'s result; ``ConnectionResetError`` once the client's connection has closed.

    aiohttp does not cancel a handler whose client left, so a silent follow or watch would hold
    its task, connection and file descriptors until its next write; this looks every few seconds.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CLIENT_CHECK)
            if done:
                return task.result()
            transport = request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client closed the connection")
    finally:
        task.cancel()


class _BadRequests(logging.Filter):
    """aiohttp logs every malformed request at ERROR with a traceback; on a port exposed to the
    network that is the client's fault and a flood waiting to happen: one debug line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            log.debug("bad request: %s", exc)
            return False
        return True


_BAD_REQUESTS = _BadRequests()


class Listener:
    """One listener of the node serving an aiohttp app (the kubelet API, the healthz port, the
    local API); a port it can't bind is a ``ConfigError`` naming the ``setting`` that chose it."""

    def __init__(self, app: web.Application, *, name: str, setting: str) -> None:
        self.name = name
        self.setting = setting
        logging.getLogger("aiohttp.server").addFilter(_BAD_REQUESTS)  # a set: once however many listeners
        # Open streams (``follow``, watches) get one second to end when the listener closes.
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        self._site: web.TCPSite | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        await self.runner.setup()
        self._site = web.TCPSite(self.runner, host, port, ssl_context=ssl_context, reuse_address=True)
        try:
            await self._site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise errors.CannotListen(
                self.setting, f"{self.name}: cannot listen on {host}:{port}: {exc}"
            ) from exc

    @property
    def bound_port(self) -> int:
        """The port actually bound (the configured one, or the kernel's pick for port 0)."""
        server = self._site._server if self._site is not None else None
        sockets = getattr(server, "sockets", None)
        if not sockets:
            return 0
        return int(sockets[0].getsockname()[1])

    async def stop(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.runner.cleanup()
        except TimeoutError:
            log.warning("%s listener did not close within %.1fs", self.name, timeout)


class KubeletServer(Listener):
    """The kubelet API (or the healthz port) over ``KubeletHandlers``."""

    def __init__(self, handlers: KubeletHandlers, *, name: str, setting: str = "server.port") -> None:
        super().__init__(KubeletApp(handlers).app, name=name, setting=setting)
