"""The kubelet API's streaming endpoints: ``/exec``, ``/attach``, ``/portForward`` and ``/run``.

kubelet's order of work: parse the stream options (bad -> 400), find the pod and container (404),
ask the runtime for a streaming URL, proxy the upgraded connection to it. A request that is not an
upgrade gets 400 here (kubelet's responder writes 500 for it; a client error is what it is).
Sessions are counted per pod and in total; past a limit the answer is 429 with ``Retry-After``.
The node's local API reaches the same code through ``StreamHandlers.serve``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from aiohttp import web
from multidict import MultiMapping

from vnode import errors
from vnode.provider.protocols import StreamOptions, StreamProvider
from vnode.streaming import translate
from vnode.streaming.upgrade import Upstream, forwarded_headers, open_upstream, splice, take_over

log = logging.getLogger(__name__)

EXEC, ATTACH, PORT_FORWARD = "exec", "attach", "portforward"
# Query names: kubelet's (``input``=1) and, for the local API's pods/exec, PodExecOptions' (stdin=true).
_FLAGS = {
    "stdin": ("input", "stdin"),
    "stdout": ("output", "stdout"),
    "stderr": ("error", "stderr"),
    "tty": ("tty",),
}
_TRUE = ("1", "true", "True")


@dataclass(frozen=True)
class StreamLimits:
    idle_timeout: float = 4 * 3600.0
    creation_timeout: float = 30.0
    per_pod: int = 16
    total: int = 256


class SessionCounter:
    """Open sessions per pod and in total; the single owner of those counts."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        self.per_pod: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.per_pod.values())

    @contextlib.contextmanager
    def session(self, pod_key: str) -> Iterator[None]:
        if self.total >= self.limits.total:
            raise errors.TooMany(f"too many streaming sessions on this node (limit {self.limits.total})")
        if self.per_pod[pod_key] >= self.limits.per_pod:
            raise errors.TooMany(
                f"too many streaming sessions to pod {pod_key} (limit {self.limits.per_pod})"
            )
        self.per_pod[pod_key] += 1
        try:
            yield
        finally:
            self.per_pod[pod_key] -= 1
            if not self.per_pod[pod_key]:
                del self.per_pod[pod_key]


def stream_options(query: MultiMapping[str]) -> StreamOptions:
    """kubelet's remotecommand options: at least one stream; tty drops stderr."""
    flags = {name: any(query.get(k, "") in _TRUE for k in keys) for name, keys in _FLAGS.items()}
    if not (flags["stdin"] or flags["stdout"] or flags["stderr"]):
        raise errors.InvalidInput("you must specify at least 1 of stdin, stdout, stderr")
    return StreamOptions(
        stdin=flags["stdin"],
        stdout=flags["stdout"],
        stderr=flags["stderr"] and not flags["tty"],
        tty=flags["tty"],
    )


def ports(query: MultiMapping[str]) -> list[int]:
    """``port`` values (repeatable, comma lists allowed), each 1-65535; ``ports`` as the API names it."""
    out = []
    for value in query.getall("port", []) + query.getall("ports", []):
        for part in value.split(","):
            part = part.strip()
            if not part.isdigit() or not 1 <= int(part) <= 65535:
                raise errors.InvalidInput(f"invalid port {part!r}: must be between 1 and 65535")
            out.append(int(part))
    return out


def upgrade_kind(request: web.Request) -> str:
    """``websocket`` or ``spdy``; a request that is not an upgrade is refused with 400."""
    connection = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    upgrade = request.headers.get("Upgrade", "").lower()
    if "upgrade" not in connection or not upgrade:
        raise errors.InvalidInput("Upgrade request required: use kubectl or a SPDY/WebSocket client")
    if upgrade == "websocket":
        return "websocket"
    if upgrade.startswith("spdy/"):
        return "spdy"
    raise errors.InvalidInput(f"unsupported upgrade {request.headers['Upgrade']!r}: SPDY/3.1 or websocket")


def relay(upstream: Upstream) -> web.Response:
    """The runtime's refusal (403 for an unsupported protocol, 400, ...) as the client's answer."""
    head = upstream.head
    headers = {
        k: v
        for k, v in head.headers.items()
        if k.lower() in ("content-type", "x-accepted-stream-protocol-versions")
    }
    return web.Response(status=head.status, body=head.body, headers=headers)


class StreamHandlers:
    """Routes of the streaming endpoints over a ``StreamProvider``."""

    def __init__(self, provider: StreamProvider, limits: StreamLimits) -> None:
        self.provider = provider
        self.limits = limits
        self.sessions = SessionCounter(limits)

    def routes(self) -> list[web.RouteDef]:
        out = []
        for kind, path in ((EXEC, "/exec"), (ATTACH, "/attach")):
            handler = self._container_handler(kind)
            out += [
                web.route("*", path + "/{namespace}/{pod}/{container}", handler),
                web.route("*", path + "/{namespace}/{pod}/{uid}/{container}", handler),
            ]
        out += [
            web.route("*", "/portForward/{namespace}/{pod}", self.port_forward),
            web.route("*", "/portForward/{namespace}/{pod}/{uid}", self.port_forward),
            web.route("*", "/run/{namespace}/{pod}/{container}", self.run),
            web.route("*", "/run/{namespace}/{pod}/{uid}/{container}", self.run),
        ]
        return out

    def _container_handler(self, kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            info = request.match_info
            return await self.serve(
                request, kind, info["namespace"], info["pod"], info.get("uid"), info["container"]
            )

        return handler

    async def port_forward(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return await self.serve(request, PORT_FORWARD, info["namespace"], info["pod"], info.get("uid"), "")

    async def run(self, request: web.Request) -> web.Response:
        """kubelet's ``/run``: the command (``cmd``, split on spaces) runs to completion; its output."""
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"], text="use POST for /run\n")
        info = request.match_info
        command = [c for c in request.query.get("cmd", "").split(" ") if c]
        if not command:
            raise errors.InvalidInput("missing cmd: /run/{namespace}/{pod}/{container}?cmd=...")
        stdout, stderr, code = await self.provider.run_sync(
            info["namespace"], info["pod"], info.get("uid"), info["container"], command
        )
        if code != 0:
            text = (stderr or stdout).decode(errors="replace")
            raise errors.RuntimeFailure(f"command {command!r} exited with {code}: {text}")
        return web.Response(body=stdout + stderr, content_type="text/plain")

    async def serve(
        self,
        request: web.Request,
        kind: str,
        namespace: str,
        pod: str,
        uid: str | None,
        container: str,
    ) -> web.StreamResponse:
        """One session: validate, count, get the runtime's URL, proxy (or translate) the upgrade."""
        if request.method not in ("GET", "POST"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"], text="use GET or POST\n")
        q = request.query
        options = stream_options(q) if kind != PORT_FORWARD else StreamOptions()
        command = q.getall("command", [])
        if kind == EXEC and not command:
            raise errors.InvalidInput("you must specify a command: command=<arg> for each argument")
        wanted_ports = ports(q) if kind == PORT_FORWARD else []
        with self.sessions.session(f"{namespace}/{pod}"):
            if kind == EXEC:
                url = await self.provider.exec_url(namespace, pod, uid, container, command, options)
            elif kind == ATTACH:
                url = await self.provider.attach_url(namespace, pod, uid, container, options)
            else:
                url = await self.provider.port_forward_url(namespace, pod, uid, wanted_ports)
            upgrade = upgrade_kind(request)  # after the lookup, as kubelet: a missing pod is a 404 first
            offered = translate.offered_protocols(request) if upgrade == "websocket" else []
            what = f"{kind} {namespace}/{pod}" + (f"/{container}" if container else "")
            if kind != PORT_FORWARD and translate.V5 in offered:
                return await self._translated(request, url, what, translate.V4, translate.V5, options)
            if kind == PORT_FORWARD and translate.TUNNEL in offered:
                return await self._translated(
                    request, url, what, translate.PORT_FORWARD, translate.TUNNEL, None
                )
            return await self._passed_through(request, url, what)

    async def _passed_through(self, request: web.Request, url: str, what: str) -> web.StreamResponse:
        upstream = await open_upstream(
            url, request.method, forwarded_headers(request), self.limits.creation_timeout
        )
        if upstream.head.status != 101:
            log.info("%s: the runtime answered %d", what, upstream.head.status)
            return relay(upstream)
        client = await take_over(request, upstream.head)
        log.info(
            "%s: session started (%s)",
            what,
            upstream.head.headers.get("X-Stream-Protocol-Version")
            or upstream.head.headers.get("Sec-WebSocket-Protocol", ""),
        )
        why = await splice(client, upstream, self.limits.idle_timeout)
        log.info("%s: session ended: %s", what, why)
        return client.response

    async def _translated(
        self,
        request: web.Request,
        url: str,
        what: str,
        spdy_protocol: str,
        ws_protocol: str,
        options: StreamOptions | None,
    ) -> web.StreamResponse:
        headers = [
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", spdy_protocol),
        ]
        upstream = await open_upstream(url, "POST", headers, self.limits.creation_timeout)
        if upstream.head.status != 101:
            log.info("%s: the runtime answered %d", what, upstream.head.status)
            return relay(upstream)
        ws = web.WebSocketResponse(protocols=(ws_protocol,), autoping=True, max_msg_size=0)
        try:
            await ws.prepare(request)
            log.info("%s: session started (%s, translated to SPDY %s)", what, ws_protocol, spdy_protocol)
            if options is not None:
                why = await translate.remote_command(ws, upstream, options, self.limits.idle_timeout)
            else:
                why = await translate.tunnel(ws, upstream, self.limits.idle_timeout)
            log.info("%s: session ended: %s", what, why)
        finally:
            upstream.close()
            await translate.close_quietly(ws)
        return ws
