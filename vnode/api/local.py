"""The local API: a read-only Kubernetes API, served from what this node holds, for kubectl.

While the control plane is down (or in standalone mode, where there is none), an operator on the
node can still run ``kubectl --kubeconfig <root-dir>/local.kubeconfig get pods`` and
``kubectl logs [-f]``. It serves discovery, pods (list, get, watch, ``log``), this node, and
configMaps, secrets and services from an ``ObjectReader`` (empty until the durable object cache
provides them). Every write answers 405: the node is not a control plane and must never diverge
from the one it will rejoin.

Watches are driven by ``PodManager.add_listener``. ``resourceVersion`` is a per-process counter
that grows by one per pod change; it restarts with vnode, so a watch resuming from a version this
process did not hand out (or one older than the last ``HISTORY`` changes) gets a 410 Expired
Status and the client re-lists, as it does against an API server after compaction. Nodes and
objects have no change feed: their watches send the current items and then stay quiet.

This module holds the routes, the reads (list, get, pods/log, the session subresources) and the
listener; the resource table and discovery are ``vnode.api.localresources``, the watches
``vnode.api.localwatch``, the pod history they replay ``vnode.api.watchcache``.

Security for now: HTTPS with the node's serving certificate, and one bearer token, random, kept
in ``<root-dir>/local.token`` (0600) and written with the server and CA into
``<root-dir>/local.kubeconfig`` (0600, context ``vnode-local``). The generated serving certificate
is self-signed, so it is its own CA (``certificate-authority-data``); a configured certificate
issued by some CA can't be verified from the leaf alone, so the kubeconfig then says
``insecure-skip-tls-verify: true`` (the token still gates every request). x509 client
certificates and webhook authentication/authorization come with the security issue.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import platform
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from vnode import errors
from vnode.api.apistatus import ApiError, not_found, status_body
from vnode.api.credentials import server_url, write_kubeconfig
from vnode.api.localresources import RESOURCES, STREAM_SUBRESOURCES, Resource, resource_list
from vnode.api.localwatch import LocalWatches
from vnode.api.openapi import OpenApi
from vnode.api.server import Listener, while_connected
from vnode.api.stats import PATHS as STATS_PATHS
from vnode.api.stats import StatsHandlers
from vnode.api.streams import PORT_FORWARD, StreamHandlers
from vnode.api.watchcache import LocalPods, PodHistory
from vnode.kube.selectors import EVENT_FIELDS, POD_FIELDS, Filter, parse_selector
from vnode.kube.tables import table, wants_table
from vnode.logs.options import parse_log_query
from vnode.logs.reader import read_log
from vnode.provider.protocols import ObjectReader

log = logging.getLogger(__name__)

WRITES = ("POST", "PUT", "PATCH", "DELETE")
_STREAM_PATH = re.compile(r"^/api/v1/namespaces/[^/]+/pods/[^/]+/(exec|attach|portforward)$")

# -- this node --------------------------------------------------------------------------------


def minimal_node(
    name: str,
    ip: str,
    labels: Mapping[str, str],
    runtime_problem: str | None,
    created: str,
    version: str,
    pressure: Sequence[tuple[str, bool, str, str]] = (),
    node_info: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Node when the API never showed one (standalone, or not registered yet); ``pressure``:
    the pressure conditions as (type, status, reason, message); ``node_info``: more of
    ``status.nodeInfo`` (kernel, OS image, container runtime, machine and boot IDs)."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    ready = runtime_problem is None
    condition = {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "KubeletNotReady",
        "message": "kubelet is posting ready status"
        if ready
        else f"container runtime is down: {runtime_problem}",
    }
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "node-role.kubernetes.io/edge": "",
                **labels,
            },
        },
        "spec": {},
        "status": {
            "conditions": [
                *(
                    {"type": kind, "status": str(on), "reason": reason, "message": message}
                    for kind, on, reason, message in pressure
                ),
                condition,
            ],
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "nodeInfo": {
                **(node_info or {}),
                "kubeletVersion": version,
                "operatingSystem": "linux",
                "architecture": arch,
            },
        },
    }


# -- the application --------------------------------------------------------------------------


class EmptyObjects:
    """An ``ObjectReader`` with nothing in it: the local API answers empty lists and 404s."""

    def list_objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        return []

    def read_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return None


@dataclass
class LocalSources:
    """What the local API serves from, given at wiring time."""

    pods: LocalPods
    node: Callable[[], dict[str, Any]]  # this node's Node object, as the API last showed it or built
    objects: ObjectReader
    token: str
    version: str  # gitVersion, the node's kubeletVersion
    streams: StreamHandlers | None = None  # pods/exec, pods/attach, pods/portforward
    stats: StatsHandlers | None = None  # nodes/<this node>/proxy/{stats/summary,metrics,...}
    # authn/authz (vnode.api.guard.Guard.local): None to go on, else (code, message); without
    # it only ``token`` is accepted
    access: Callable[[web.Request], Awaitable[tuple[int, str] | None]] | None = None
    # the node's Events as v1 Events (what it recorded, kept across restarts), and a way to hear
    # of new ones: ``watch_events(callback)`` returns the function that stops it
    events: Callable[[], list[dict[str, Any]]] = list
    watch_events: Callable[[Callable[[], None]], Callable[[], None]] | None = None
    # the control plane's OpenAPI v3 document of core/v1 and its hash, as last kept (joined nodes)
    openapi: Callable[[], tuple[dict[str, Any], str] | None] = lambda: None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


class LocalApi:
    """The routes of the read-only API over ``LocalSources``."""

    def __init__(self, sources: LocalSources) -> None:
        self.sources = sources
        self.history = PodHistory(sources.pods)
        self.watches = LocalWatches(self.history, self._items, sources.watch_events)
        self.openapi = OpenApi(RESOURCES.values(), sources.version, sources.openapi)
        self.app = web.Application(middlewares=[self._guard])
        self.app.router.add_route("*", "/{path:.*}", self.dispatch)
        self.app.on_shutdown.append(self._close_streams)

    async def _close_streams(self, app: web.Application) -> None:
        self.watches.close()
        self.history.close()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Token first, then read-only, then Status bodies for every error."""
        try:
            if self.sources.access is not None:
                denied = await self.sources.access(request)
                if denied is not None:
                    code, message = denied
                    raise ApiError(code, message, reason={403: "Forbidden"}.get(code))
            else:
                given = request.headers.get("Authorization", "")
                scheme, _, token = given.partition(" ")
                expected = self.sources.token.encode()
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                    raise ApiError(401, "Unauthorized")
            if request.method == "POST" and _STREAM_PATH.match(request.path):
                pass  # a session, not a write
            elif request.method in WRITES:
                raise ApiError(
                    405, f"the local API of this node is read-only: {request.method} is not allowed"
                )
            elif request.method not in ("GET", "HEAD"):
                raise ApiError(405, f"{request.method} is not allowed")
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as exc:
            return _json(exc.body(), exc.code)
        except errors.VnodeError as exc:
            error = ApiError.from_vnode(exc)
            return _json(error.body(), error.code)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("local API: %s %s failed", request.method, request.path)
            return _json(status_body(500, "InternalError", "internal error"), 500)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            major, minor = [*re.findall(r"\d+", self.sources.version), "0", "0"][:2]
            return _json({"major": major, "minor": minor, "gitVersion": self.sources.version,
                          "platform": f"linux/{platform.machine()}"})  # fmt: skip
        if parts == ["api"]:
            return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if parts == ["openapi", "v3"]:
            return _json(self.openapi.index())
        if parts == ["openapi", "v3", "api", "v1"]:
            return _json(self.openapi.document()[0])
        if parts == ["apis"]:
            return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if parts == ["api", "v1"]:
            return _json(resource_list(self.sources.streams is not None))
        if parts[:2] != ["api", "v1"]:
            raise ApiError(404, f"the server could not find the requested resource {request.path}")
        rest, namespace = parts[2:], None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if rest[:1] == ["nodes"] and len(rest) >= 4 and rest[2] == "proxy" and self.sources.stats is not None:
            return await self.node_proxy(request, rest[1], "/".join(rest[3:]))
        resource = RESOURCES.get(rest[0]) if rest else None
        if resource is None or len(rest) > 3 or (namespace is not None and not resource.namespaced):
            raise ApiError(404, f"the server could not find the requested resource {request.path}")
        name, sub = [*rest[1:], None, None][:2]
        if sub is not None:
            if resource.plural == "pods" and sub == "log" and namespace is not None and name is not None:
                return await self.pod_log(request, namespace, name)
            if (
                resource.plural == "pods"
                and sub in STREAM_SUBRESOURCES
                and namespace is not None
                and name is not None
                and self.sources.streams is not None
            ):
                return await self.pod_stream(request, sub, namespace, name)
            raise ApiError(404, f"the server could not find the requested resource {request.path}")
        if name is not None and resource.namespaced and namespace is None:
            raise ApiError(404, f"the server could not find the requested resource {request.path}")
        return await self.read(request, resource, namespace, name)

    async def node_proxy(self, request: web.Request, node: str, path: str) -> web.StreamResponse:
        """This node's stats and metrics, as the API server proxies them (``nodes/proxy``)."""
        assert self.sources.stats is not None
        if node != self.sources.stats.node_name or path not in STATS_PATHS:
            raise ApiError(404, f"the server could not find the requested resource {request.path}")
        return await self.sources.stats.serve(request, path)

    def _items(self, resource: Resource, namespace: str | None) -> tuple[list[dict[str, Any]], int]:
        if resource.plural == "pods":
            return self.history.snapshot()
        if resource.plural == "nodes":
            return [self._node()], self.history.rv
        if resource.plural == "events":
            events = self.sources.events()
            mine = [e for e in events if namespace is None or e["metadata"]["namespace"] == namespace]
            return mine, self.history.rv
        objects = self.sources.objects.list_objects(resource.plural, namespace)
        return objects, self.history.rv

    def _node(self) -> dict[str, Any]:
        node = dict(self.sources.node())
        node.setdefault("kind", "Node")
        node.setdefault("apiVersion", "v1")
        return node

    async def read(
        self, request: web.Request, resource: Resource, namespace: str | None, name: str | None
    ) -> web.StreamResponse:
        query, now = request.query, datetime.now(tz=UTC)
        as_table = wants_table(request.headers.get("Accept", ""))
        if name is not None:
            obj = self._get(resource, namespace or "", name)
            if as_table:
                return _json(table(resource.kind, [obj], obj["metadata"].get("resourceVersion", ""), now))
            return _json(obj)
        fields = {"pods": POD_FIELDS, "events": EVENT_FIELDS}.get(
            resource.plural, ("metadata.name", "metadata.namespace")
        )
        wanted = Filter(
            namespace,
            parse_selector(query.get("labelSelector")),
            parse_selector(query.get("fieldSelector"), fields=fields),
        )
        if query.get("watch") in ("1", "true"):
            return await self.watches.watch(request, resource, wanted, as_table)
        items, rv = self._items(resource, namespace)
        items = [i for i in items if wanted.wants(i)]
        if as_table:
            return _json(table(resource.kind, items, str(rv), now))
        return _json({"kind": f"{resource.kind}List", "apiVersion": "v1",
                      "metadata": {"resourceVersion": str(rv)}, "items": items})  # fmt: skip

    def _get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
        if resource.plural == "pods":
            items, _ = self.history.snapshot()
            for pod in items:
                meta = pod["metadata"]
                if meta["name"] == name and meta.get("namespace", "default") == namespace:
                    return pod
        elif resource.plural == "nodes":
            node = self._node()
            if node["metadata"]["name"] == name:
                return node
        elif resource.plural == "events":
            for event in self._items(resource, namespace)[0]:
                if event["metadata"]["name"] == name:
                    return event
        else:
            obj = self.sources.objects.read_object(resource.plural, namespace, name)
            if obj is not None:
                return obj
        raise not_found(resource.plural, name)

    async def pod_stream(
        self, request: web.Request, sub: str, namespace: str, name: str
    ) -> web.StreamResponse:
        """pods/exec|attach|portforward: the kubelet API's session handlers, container defaulted
        as the API server defaults it (the only one; otherwise the caller must name one)."""
        assert self.sources.streams is not None
        container = request.query.get("container", "")
        if sub != PORT_FORWARD and not container:
            pod = self._get(RESOURCES["pods"], namespace, name)
            names = [c["name"] for c in pod.get("spec", {}).get("containers") or []]
            if len(names) != 1:
                raise ApiError(
                    400,
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]",
                )
            container = names[0]
        return await self.sources.streams.serve(request, sub, namespace, name, None, container)

    async def pod_log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        """``pods/{name}/log`` through the same locator and reader as the kubelet's /containerLogs."""
        pod = self._get(RESOURCES["pods"], namespace, name)
        spec = pod.get("spec") or {}
        container = request.query.get("container")
        if not container:
            names = [c["name"] for c in spec.get("containers") or []]
            if len(names) != 1:
                inits = [c["name"] for c in spec.get("initContainers") or []]
                message = (
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
                )
                if inits:
                    message += f" or one of the init containers: [{' '.join(inits)}]"
                raise ApiError(400, message)
            container = names[0]
        options = parse_log_query(request.query, datetime.now(tz=UTC))
        target = await self.sources.pods.locate_log(namespace, name, container, options.previous)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})

        async def write(data: bytes) -> None:
            if not response.prepared:
                await response.prepare(request)
            await response.write(data)

        try:
            await while_connected(request, read_log(target, options, write))
        except errors.VnodeError:
            if not response.prepared:
                raise
            log.warning("local API: log stream of %s/%s/%s ended early", namespace, name, container)
            return response
        except ConnectionResetError:
            return response
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
        return response


# -- the listener and its credentials ---------------------------------------------------------


async def serve(
    api: LocalApi, host: str, port: int, ssl_context: ssl.SSLContext, cert_path: Path, kubeconfig_path: Path
) -> Listener:
    """Start the listener, then write the kubeconfig for the port it got."""
    server = Listener(api.app, name="local API", setting="server.localAPIPort")
    await server.start(host, port, ssl_context)
    bound = server.bound_port
    try:
        cert_pem = await asyncio.to_thread(cert_path.read_text)
        url = server_url(host, bound)
        await asyncio.to_thread(write_kubeconfig, kubeconfig_path, url, cert_pem, api.sources.token)
    except OSError as exc:
        await server.stop(timeout=1.0)
        raise errors.ConfigError("server.localAPIPort", f"writing {kubeconfig_path}: {exc}") from exc
    log.info("local read-only API serving on %s (kubeconfig %s)", url, kubeconfig_path)
    return server
