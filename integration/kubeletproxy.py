"""``pods/log``, ``pods/exec``, ``pods/attach`` and ``pods/portforward`` for the test control plane.

kube-apiserver serves these subresources by calling the node's kubelet: it finds the pod's node,
the node's InternalIP and ``status.daemonEndpoints.kubeletEndpoint.Port``, and calls
``https://IP:PORT/containerLogs/{ns}/{pod}/{container}?<PodLogOptions>``,
``/exec/{ns}/{pod}/{container}?command=..&input=1&output=1&error=1&tty=1``, ``/attach/...`` or
``/portForward/{ns}/{pod}?port=..`` with its kubelet client certificate, without verifying the
kubelet's serving certificate (its default). Logs are streamed through; exec, attach and
port-forward are byte-level upgrade proxies: the client's upgrade headers go to the kubelet, the
kubelet's answer comes back, and after a ``101`` the bytes are copied both ways until either side
closes. SPDY is never parsed here, as kube-apiserver's upgrade-aware proxy does not parse it.

aiohttp's HTTP parser treats only ``Upgrade: websocket`` and ``tcp`` as upgrades, so the client
connection is taken over by hand: the request's protocol gets a parser that hands every later
byte to the splice (what ``aiohttp.web_ws`` does for WebSockets), and the ``101`` is a response
whose body is written raw.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from integration.pki import ClusterPki
from vnode import errors
from vnode.api.apistatus import status_body
from vnode.streaming.upgrade import forwarded_headers, open_upstream, splice, take_over

SUBRESOURCES = frozenset({"log", "exec", "attach", "portforward"})
CLIENT_CERT_NAME = "kube-apiserver-kubelet-client"
IDLE_TIMEOUT = 4 * 3600.0  # kube-apiserver leaves idle streams to the kubelet's own timeout
ADDRESS_TYPES = ("InternalIP", "ExternalIP", "Hostname")  # Hostname last: test nodes' don't resolve
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})
# Hop-by-hop headers of a plain (non-upgrade) answer: aiohttp frames the relayed body itself.
_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"})

Getter = Callable[[str, str, str], "dict[str, Any] | None"]


class ApiStatus(Exception):
    """An error answered as a metav1.Status, as kube-apiserver answers it."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def response(self) -> web.Response:
        return web.json_response(status_body(self.code, self.reason, self.message), status=self.code)


def bad_request(message: str) -> ApiStatus:
    return ApiStatus(400, "BadRequest", message)


class KubeletProxy:
    """The four subresources over a store lookup; ``get(plural, namespace, name)`` reads it."""

    def __init__(self, get: Getter, pki_store: Path) -> None:
        self.get = get
        self.pki_store = pki_store
        self._tls: ssl.SSLContext | None = None

    @property
    def client_ca(self) -> Path:
        """The CA that signs the proxy's client certificate (a kubelet's ``--client-ca-file``)."""
        return ClusterPki(self.pki_store).ca_cert

    def tls(self) -> ssl.SSLContext:
        """Client certificate from the cluster CA; the kubelet's certificate is not verified,
        as kube-apiserver does not verify it unless given ``--kubelet-certificate-authority``."""
        if self._tls is None:
            cert, key = ClusterPki(self.pki_store).issue(
                CLIENT_CERT_NAME, server=False, organization="system:masters"
            )
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.load_cert_chain(str(cert), str(key))
            self._tls = ctx
        return self._tls

    async def handle(self, request: web.Request, namespace: str, name: str, sub: str) -> web.StreamResponse:
        try:
            pod = self.get("pods", namespace, name)
            if pod is None:
                raise ApiStatus(404, "NotFound", f'pods "{name}" not found')
            if sub == "log":
                return await self._logs(request, pod)
            if not _is_upgrade(request):
                raise bad_request("Upgrade request required")
            host, port = self._kubelet(pod)
            if sub == "portforward":
                path = f"/portForward/{namespace}/{name}"
                query = _portforward_query(request)
            else:
                container = _container(pod, request.query.get("container", ""), for_logs=False)
                path = f"/{sub}/{namespace}/{name}/{container}"
                query = _stream_query(request, with_command=sub == "exec")
            return await upgrade_proxy(request, host, port, path + (f"?{query}" if query else ""), self.tls())
        except ApiStatus as exc:
            return exc.response()

    def _kubelet(self, pod: dict[str, Any]) -> tuple[str, int]:
        name = pod["metadata"]["name"]
        node_name = (pod.get("spec") or {}).get("nodeName") or ""
        if not node_name:
            raise bad_request(f"pod {name} does not have a host assigned")
        node = self.get("nodes", "", node_name)
        if node is None:
            raise ApiStatus(404, "NotFound", f'nodes "{node_name}" not found')
        st = node.get("status") or {}
        addresses = {a.get("type"): a.get("address") for a in st.get("addresses") or []}
        host = next((addresses[t] for t in ADDRESS_TYPES if addresses.get(t)), None)
        port = ((st.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
        if not host or not port:
            raise ApiStatus(500, "InternalError", f"Internal error occurred: no address for node {node_name}")
        return host, int(port)

    async def _logs(self, request: web.Request, pod: dict[str, Any]) -> web.StreamResponse:
        meta = pod["metadata"]
        container = _container(pod, request.query.get("container", ""), for_logs=True)
        options = _log_query(request)
        if not (pod.get("spec") or {}).get("nodeName"):
            return web.Response(status=200, content_type="text/plain")  # no location: an empty log
        host, port = self._kubelet(pod)
        url = f"https://{host}:{port}/containerLogs/{meta['namespace']}/{meta['name']}/{container}"
        if options:
            url += f"?{options}"
        timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=None)
        out: web.StreamResponse | None = None
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
            try:
                target = URL(url, encoded=True)  # as encoded here, like Go's url.Values.Encode
                async with session.get(target, ssl=self.tls(), allow_redirects=False) as resp:
                    if not 200 <= resp.status <= 206:
                        raise _kubelet_error(resp.status, await resp.content.read(16 << 10), meta["name"])
                    out = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
                    await out.prepare(request)
                    async for chunk in resp.content.iter_any():
                        await out.write(chunk)  # each write is flushed: follow streams
            except (aiohttp.ClientError, OSError) as exc:
                if out is not None:
                    return out  # the stream broke after it started: end it
                raise ApiStatus(500, "InternalError", f"Internal error occurred: {exc}") from None
        assert out is not None
        await out.write_eof()
        return out


def _is_upgrade(request: web.Request) -> bool:
    tokens = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return "upgrade" in tokens and bool(request.headers.get("Upgrade"))


def _bool(request: web.Request, key: str, default: bool) -> bool:
    value = request.query.get(key)
    if value is None or value == "":
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise bad_request(f'invalid value for {key}: strconv.ParseBool: parsing "{value}": invalid syntax')


def _int(request: web.Request, key: str) -> int | None:
    value = request.query.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        message = f'invalid value for {key}: strconv.ParseInt: parsing "{value}": invalid syntax'
        raise bad_request(message) from None


def _encode(params: list[tuple[str, str]]) -> str:
    """Go's ``url.Values.Encode``: keys sorted, values in order."""
    return urlencode(sorted(params, key=lambda kv: kv[0]))


def _log_query(request: web.Request) -> str:
    """PodLogOptions from the request, re-encoded for the kubelet as kube-apiserver does
    (``container`` and ``insecureSkipTLSVerifyBackend`` are the apiserver's own)."""
    params: list[tuple[str, str]] = []
    for key in ("follow", "previous", "timestamps"):
        if _bool(request, key, False):
            params.append((key, "true"))
    for key in ("sinceSeconds", "tailLines", "limitBytes"):
        number = _int(request, key)
        if number is not None:
            params.append((key, str(number)))
    since = request.query.get("sinceTime")
    if since:
        try:
            when = datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise bad_request(f'invalid value for sinceTime: parsing time "{since}"') from None
        params.append(("sinceTime", when.strftime("%Y-%m-%dT%H:%M:%S") + _zone(when)))
    if request.query.get("stream"):
        params.append(("stream", request.query["stream"]))
    return _encode(params)


def _zone(when: datetime) -> str:
    offset = when.utcoffset()
    if not offset:
        return "Z"
    text = when.strftime("%z")
    return f"{text[:3]}:{text[3:]}"


def _stream_query(request: web.Request, *, with_command: bool) -> str:
    """Exec/attach options: stdout and stderr default to true (the v1 defaults), each flag true is
    sent as ``1`` under the kubelet's names, and ``command`` is repeated, one argv element each."""
    params: list[tuple[str, str]] = []
    for key, kubelet_key, default in (
        ("stdin", "input", False),
        ("stdout", "output", True),
        ("stderr", "error", True),
        ("tty", "tty", False),
    ):
        if _bool(request, key, default):
            params.append((kubelet_key, "1"))
    if with_command:
        params.extend(("command", c) for c in request.query.getall("command", []))
    return _encode(params)


def _portforward_query(request: web.Request) -> str:
    ports: list[str] = []
    for value in request.query.getall("ports", []):
        for part in value.split(","):
            if part.strip():
                try:
                    number = int(part)
                except ValueError:
                    raise bad_request(f"invalid port {part!r}") from None
                ports.append(str(number))
    return _encode([("port", ",".join(ports))]) if ports else ""


def _names(containers: list[dict[str, Any]] | None) -> list[str]:
    return [c.get("name", "") for c in containers or []]


def _has(pod: dict[str, Any], container: str) -> bool:
    spec = pod.get("spec") or {}
    kinds = ("initContainers", "containers", "ephemeralContainers")
    return any(container in _names(spec.get(kind)) for kind in kinds)


def _container(pod: dict[str, Any], container: str, *, for_logs: bool) -> str:
    """kube-apiserver's choice of container: the named one if the pod has it, else the only one.
    With several, the error lists the choices as it does: for logs init containers first in one
    list (``validateContainer``), for exec and attach a second list of them (``streamLocation``)."""
    name, spec = pod["metadata"]["name"], pod.get("spec") or {}
    if container:
        if not _has(pod, container):
            raise bad_request(f"container {container} is not valid for pod {name}")
        return container
    containers = _names(spec.get("containers"))
    if len(containers) == 1:
        return containers[0]
    if not containers:
        raise bad_request(f"a container name must be specified for pod {name}")
    inits = _names(spec.get("initContainers"))
    if for_logs:
        every = inits + containers + _names(spec.get("ephemeralContainers"))
        raise bad_request(
            f"a container name must be specified for pod {name}, choose one of: [{' '.join(every)}]"
        )
    message = f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
    if inits:
        message += f" or one of the init containers: [{' '.join(inits)}]"
    raise bad_request(message)


def _kubelet_error(code: int, body: bytes, name: str) -> ApiStatus:
    """The generic response checker of kube-apiserver's location streamer."""
    text = body.decode(errors="replace")
    if code == 500:
        return ApiStatus(500, "InternalError", f"Internal error occurred: {text}")
    if code == 400:
        return bad_request(text)
    reasons = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 429: "TooManyRequests"}
    return ApiStatus(code, reasons.get(code, "Unknown"), text or f'pods/log "{name}": status {code}')


# -- the upgrade splice -----------------------------------------------------------------------


async def upgrade_proxy(
    request: web.Request, host: str, port: int, target: str, tls: ssl.SSLContext | None
) -> web.StreamResponse:
    """kube-apiserver's upgrade-aware proxy: send the request with the client's headers to
    ``host:port``; relay a non-101 answer as it is; after a 101, copy bytes both ways until either
    side closes. The byte work is vnode's own (``vnode.streaming.upgrade``), which does the same
    between a kubelet and its runtime."""
    scheme = "https" if tls is not None else "http"
    try:
        upstream = await open_upstream(
            f"{scheme}://{host}:{port}{target}", request.method, forwarded_headers(request), 30, tls
        )
    except errors.VnodeError as exc:
        return ApiStatus(
            500, "InternalError", f"Internal error occurred: error dialing backend: {exc}"
        ).response()
    head = upstream.head
    if head.status != 101:
        kept = CIMultiDict((k, v) for k, v in head.headers.items() if k.lower() not in _HOP)
        return web.Response(status=head.status, reason=head.reason or None, headers=kept, body=head.body)
    client = await take_over(request, head)
    await splice(client, upstream, IDLE_TIMEOUT)
    return client.response
