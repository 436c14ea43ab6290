"""A test control plane: the parts of the Kubernetes API a node and kubectl rely on.

No kube-apiserver can be installed on these machines, so the tests run this instead:

    python -m integration.controlplane --listen 127.0.0.1:PORT [--store sqlite:///PATH] \
        --kubeconfig-out FILE

It serves discovery (``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/coordination.k8s.io/v1``),
and for namespaced pods, configmaps, secrets, events, serviceaccounts and leases and cluster-scoped
nodes: get, list, watch, create, update, patch (JSON merge patch; strategic merge patch with the
merge keys the node uses), delete, and the ``status`` subresource. The semantics follow the API
conventions: every write gets a new ``resourceVersion`` from one counter; an update whose
``metadata.resourceVersion`` is stale gets 409 Conflict; list returns the collection's version and
a watch started from it sees every later change exactly once, in order; ``labelSelector`` and
``fieldSelector`` filter both; bookmarks are sent when asked for; a watch from a version older
than the retained history gets a 410 ``Expired`` ERROR event; deleting a pod bound to a node sets
``deletionTimestamp`` and ``deletionGracePeriodSeconds`` (graceful deletion) until it is deleted
with grace 0.

State lives in a SQLite database (``--store``): several processes given the same store are
masters of one cluster, so killing one process kills one master and nothing else. Each master
polls the shared change log to feed its watches.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import builtins
import contextlib
import copy
import hashlib
import json
import os
import re
import sqlite3
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from integration import authapi
from integration.kubeletproxy import SUBRESOURCES as KUBELET_SUBRESOURCES
from integration.kubeletproxy import KubeletProxy
from integration.pki import ClusterPki
from vnode import errors
from vnode.api.apistatus import status_body
from vnode.kube import selectors, tables
from vnode.kube.selectors import Requirement
from vnode.sources.manifests import apply_pod_defaults

TOKEN_KEY = os.urandom(32)
HISTORY = 20000  # change-log rows kept; older versions get 410 Gone
POLL_SECONDS = 0.02
BOOKMARK_SECONDS = 5.0


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.group}/{self.plural}"


RESOURCES = [
    Resource("", "v1", "pods", "Pod", True, ("po",)),
    Resource("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "events", "Event", True, ("ev",)),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    Resource("", "v1", "namespaces", "Namespace", False, ("ns",)),
    Resource("", "v1", "nodes", "Node", False, ("no",)),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True),
]
STATUS_RESOURCES = {"pods", "nodes", "namespaces"}
MERGE_KEYS = {
    "conditions": "type",
    "addresses": "type",
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "ownerReferences": "uid",
}


def now_text() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    """A metav1.Status error body, as the API server answers."""
    body = status_body(code, reason, message)
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


# -- selectors --------------------------------------------------------------------------------


def parse_selector(text: str | None) -> list[Requirement]:
    """A label or field selector, parsed by vnode's own rules (``vnode.kube.selectors``)."""
    try:
        return selectors.parse_selector(text)
    except errors.InvalidInput as exc:
        raise ApiError(400, "BadRequest", str(exc)) from None


matches = selectors.matches


# The imitation's own field set: every kind's name and namespace, and the Event fields vnode's
# event poster selects by (vnode's local API serves pods only).
def field_values(obj: dict[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata", {})
    values = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", "")}
    spec, st = obj.get("spec") or {}, obj.get("status") or {}
    if obj.get("kind") == "Pod":
        values["spec.nodeName"] = spec.get("nodeName", "")
        values["status.phase"] = st.get("phase", "")
    if obj.get("kind") == "Event":
        involved = obj.get("involvedObject") or {}
        for k in ("kind", "name", "namespace", "uid"):
            values[f"involvedObject.{k}"] = str(involved.get(k, ""))
    return values


# -- patches ----------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge: like a merge patch, but lists with a merge key merge by that key."""
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(target, list):
        key = MERGE_KEYS[field]
        merged = [copy.deepcopy(item) for item in target]
        for item in patch:
            if not isinstance(item, dict):
                continue
            if item.get("$patch") == "delete":
                merged = [m for m in merged if m.get(key) != item.get(key)]
                continue
            index = next((i for i, m in enumerate(merged) if m.get(key) == item.get(key)), None)
            if index is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[index] = strategic_merge_patch(merged[index], item)
        return merged
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value, key)
    return result


# -- the store --------------------------------------------------------------------------------


def _locked(method: Any) -> Any:
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


class Store:
    """Objects and the change log in SQLite; every write is one IMMEDIATE transaction.

    One connection per master, used from the event loop (reads) and from worker threads (writes),
    so every method holds ``lock``; other masters are other processes, which SQLite serialises.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS objects (
                resource TEXT, namespace TEXT, name TEXT, rv INTEGER, body TEXT,
                PRIMARY KEY (resource, namespace, name));
            CREATE TABLE IF NOT EXISTS changes (
                rv INTEGER PRIMARY KEY AUTOINCREMENT, resource TEXT, type TEXT, body TEXT);
            """
        )

    @_locked
    def current_rv(self) -> int:
        row = self.db.execute("SELECT MAX(rv) FROM changes").fetchone()
        return int(row[0] or 0)

    @_locked
    def oldest_rv(self) -> int:
        row = self.db.execute("SELECT MIN(rv) FROM changes").fetchone()
        return int(row[0] or 0)

    @_locked
    def get(self, res: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT body FROM objects WHERE resource=? AND namespace=? AND name=?", (res.key, namespace, name)
        ).fetchone()
        return json.loads(row[0]) if row else None

    @_locked
    def list(self, res: Resource, namespace: str | None) -> tuple[list[dict[str, Any]], int]:
        self.db.execute("BEGIN")
        try:
            if namespace is None:
                rows = self.db.execute("SELECT body FROM objects WHERE resource=?", (res.key,)).fetchall()
            else:
                rows = self.db.execute(
                    "SELECT body FROM objects WHERE resource=? AND namespace=?", (res.key, namespace)
                ).fetchall()
            rv = self.current_rv()
        finally:
            self.db.execute("COMMIT")
        return [json.loads(r[0]) for r in rows], rv

    @_locked
    def write(
        self, res: Resource, namespace: str, name: str, mutate: Any, *, create: bool = False
    ) -> tuple[str, dict[str, Any] | None]:
        """Apply ``mutate(old) -> new | None`` atomically; returns (event type, stored object)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            old = self.get(res, namespace, name)
            if create and old is not None:
                raise ApiError(409, "AlreadyExists", f'{res.plural} "{name}" already exists')
            if not create and old is None:
                raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
            new = mutate(old)
            if new is None and old is not None:
                event, body = "DELETED", old
                cur = self.db.execute(
                    "INSERT INTO changes (resource, type, body) VALUES (?, ?, '')", (res.key, event)
                )
                rv = int(cur.lastrowid or 0)
                body = copy.deepcopy(old)
                body["metadata"]["resourceVersion"] = str(rv)
                self.db.execute("UPDATE changes SET body=? WHERE rv=?", (json.dumps(body), rv))
                self.db.execute(
                    "DELETE FROM objects WHERE resource=? AND namespace=? AND name=?",
                    (res.key, namespace, name),
                )
            elif new is None:
                raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
            else:
                event = "ADDED" if old is None else "MODIFIED"
                cur = self.db.execute(
                    "INSERT INTO changes (resource, type, body) VALUES (?, ?, '')", (res.key, event)
                )
                rv = int(cur.lastrowid or 0)
                body = new
                body["metadata"]["resourceVersion"] = str(rv)
                text = json.dumps(body)
                self.db.execute("UPDATE changes SET body=? WHERE rv=?", (text, rv))
                self.db.execute(
                    "INSERT OR REPLACE INTO objects (resource, namespace, name, rv, body) VALUES (?,?,?,?,?)",
                    (res.key, namespace, name, rv, text),
                )
            self.db.execute("DELETE FROM changes WHERE rv <= ?", (rv - HISTORY,))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return event, body

    @_locked
    def changes_since(self, rv: int) -> builtins.list[tuple[int, str, str, dict[str, Any]]]:
        rows = self.db.execute(
            "SELECT rv, resource, type, body FROM changes WHERE rv > ? ORDER BY rv", (rv,)
        ).fetchall()
        return [(int(r[0]), r[1], r[2], json.loads(r[3])) for r in rows]


# -- the server -------------------------------------------------------------------------------


class Watcher:
    def __init__(self, res: Resource, namespace: str | None, labels: Any, fields: Any) -> None:
        self.res, self.namespace, self.labels, self.fields = res, namespace, labels, fields
        self.queue: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue()

    def wants(self, resource: str, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata", {})
        if resource != self.res.key:
            return False
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return matches(meta.get("labels") or {}, self.labels) and matches(field_values(obj), self.fields)


class ControlPlane:
    """One master: the HTTP side over a shared ``Store``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.watchers: set[Watcher] = set()
        self.seen_rv = store.current_rv()
        self.app = web.Application(client_max_size=16 << 20)
        self.requests: dict[str, int] = {}  # "VERB resource" -> count, served at /debug/requests
        self.app.middlewares.append(self._count)
        self.app.router.add_get("/debug/requests", self.request_counts)
        self.app.router.add_get("/version", self.version)
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.healthz)
        self.app.router.add_get("/livez", self.healthz)
        self.app.router.add_get("/openapi/v3", self.openapi_root)
        self.app.router.add_get("/openapi/v3/{gv:.*}", self.openapi_group)
        self.app.router.add_get("/api", self.api_versions)
        self.app.router.add_get("/apis", self.api_groups)
        self.app.router.add_get("/api/{version}", self.resource_list)
        self.app.router.add_get("/apis/{group}/{version}", self.resource_list)
        authapi.install(self.app, store.path)  # TokenReview, SubjectAccessReview
        self.app.router.add_route("*", "/api/{version}/{rest:.*}", self.dispatch)
        self.app.router.add_route("*", "/apis/{group}/{version}/{rest:.*}", self.dispatch)
        self.app.cleanup_ctx.append(self._poller)
        self.kubelet = KubeletProxy(self._get, store.path)

    def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.store.get(
            next(r for r in RESOURCES if r.plural == plural), namespace, name
        )
        return found

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Counts requests by method and path shape, for the benchmarks' API-load figures."""
        if request.path != "/debug/requests":
            shape = re.sub(r"/namespaces/[^/]+", "/namespaces/*", request.path)
            parts = shape.split("/")
            if len(parts) > 5 and parts[-1] not in ("status",):
                shape = "/".join(parts[:-1]) + "/*"
            watch = " (watch)" if request.query.get("watch") in ("1", "true") else ""
            key = f"{request.method} {shape}{watch}"
            self.requests[key] = self.requests.get(key, 0) + 1
        response: web.StreamResponse = await handler(request)
        return response

    async def request_counts(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    # -- discovery ---------------------------------------------------------------------------

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"major": "1", "minor": "32", "gitVersion": "v1.32.0-vnode-test", "platform": "linux/amd64"}
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def openapi_root(self, request: web.Request) -> web.Response:
        """Just enough OpenAPI v3 for kubectl to see that writes accept ``fieldValidation`` (it then
        leaves validation to the server instead of downloading schemas)."""
        groups = sorted({("api/" if not r.group else f"apis/{r.group}/") + r.version for r in RESOURCES})
        return web.json_response({"paths": {g: {"serverRelativeURL": f"/openapi/v3/{g}"} for g in groups}})

    async def openapi_group(self, request: web.Request) -> web.Response:
        gv = request.match_info["gv"]
        paths: dict[str, Any] = {}
        param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
        for r in RESOURCES:
            prefix = ("api/" if not r.group else f"apis/{r.group}/") + r.version
            if prefix != gv:
                continue
            gvk = {"group": r.group, "version": r.version, "kind": r.kind}
            base = (
                f"/{prefix}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"/{prefix}/{r.plural}"
            )
            op = {"parameters": param, "x-kubernetes-group-version-kind": gvk, "responses": {}}
            paths[base] = {"post": {**op, "x-kubernetes-action": "post"}}
            paths[base + "/{name}"] = {verb: {**op, "x-kubernetes-action": verb} for verb in ("put", "patch")}
        return web.json_response(
            {"openapi": "3.0.0", "info": {"title": "vnode test", "version": "v1"}, "paths": paths}
        )

    async def api_versions(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        )

    async def api_groups(self, request: web.Request) -> web.Response:
        groups = sorted({r.group for r in RESOURCES if r.group})
        body = {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
                }
                for g in groups
            ],
        }
        return web.json_response(body)

    async def resource_list(self, request: web.Request) -> web.Response:
        group = request.match_info.get("group", "")
        version = request.match_info["version"]
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        items: list[dict[str, Any]] = []
        for r in RESOURCES:
            if r.group != group or r.version != version:
                continue
            items.append(
                {
                    "name": r.plural,
                    "singularName": r.kind.lower(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": verbs,
                    "shortNames": list(r.short_names),
                }
            )
            if r.plural in STATUS_RESOURCES:
                sub = {"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced}
                items.append({**sub, "kind": r.kind, "verbs": ["get", "patch", "update"]})
        if not items:
            return status(404, "NotFound", f"the server could not find the requested resource {request.path}")
        gv = f"{group}/{version}" if group else version
        return web.json_response(
            {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": items}
        )

    # -- routing -----------------------------------------------------------------------------

    def _route(self, request: web.Request) -> tuple[Resource, str | None, str | None, str | None]:
        """(resource, namespace, name, subresource) from the path."""
        group = request.match_info.get("group", "")
        version = request.match_info["version"]
        parts = [p for p in request.match_info["rest"].split("/") if p]
        namespace = None
        if parts[:1] == ["namespaces"] and len(parts) >= 3 and parts[2] != "status":
            namespace, parts = parts[1], parts[2:]
        if not parts:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource {request.path}"
            )
        plural, name, sub = (
            parts[0],
            parts[1] if len(parts) > 1 else None,
            parts[2] if len(parts) > 2 else None,
        )
        res = next(
            (r for r in RESOURCES if r.plural == plural and r.group == group and r.version == version), None
        )
        if res is None:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource {request.path}"
            )
        if not res.namespaced:
            namespace = None
        elif namespace is None and name is not None:
            raise ApiError(404, "NotFound", f"{plural} must be addressed in a namespace")
        return res, namespace, name, sub

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            res, namespace, name, sub = self._route(request)
            if sub == "token" and res.plural == "serviceaccounts" and name and request.method == "POST":
                return await self.token_request(request, namespace or "", name)
            if res.plural == "pods" and name and sub in KUBELET_SUBRESOURCES:
                return await self.kubelet.handle(request, namespace or "", name, sub)
            if sub not in (None, "status"):
                raise ApiError(404, "NotFound", f"subresource {sub} is not served")
            method = request.method
            if name is None:
                if method == "GET":
                    if request.query.get("watch") in ("1", "true"):
                        return await self.watch(request, res, namespace)
                    return self.list(request, res, namespace)
                if method == "POST":
                    return await self.create(request, res, namespace or "")
                raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
            if method == "GET":
                obj = self.store.get(res, namespace or "", name)
                if obj is None:
                    raise ApiError(404, "NotFound", f'{res.plural} "{name}" not found')
                if _wants_table(request):
                    return web.json_response(as_table(res.kind, [obj], obj["metadata"]["resourceVersion"]))
                return web.json_response(obj)
            if method == "PUT":
                return await self.update(request, res, namespace or "", name, sub)
            if method == "PATCH":
                return await self.patch(request, res, namespace or "", name, sub)
            if method == "DELETE":
                return await self.delete(request, res, namespace or "", name)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed")
        except ApiError as exc:
            return status(exc.code, exc.reason, exc.message)

    # -- verbs -------------------------------------------------------------------------------

    def list(self, request: web.Request, res: Resource, namespace: str | None) -> web.Response:
        labels = parse_selector(request.query.get("labelSelector"))
        fields = parse_selector(request.query.get("fieldSelector"))
        items, rv = self.store.list(res, namespace)
        items = [
            i
            for i in items
            if matches(i["metadata"].get("labels") or {}, labels) and matches(field_values(i), fields)
        ]
        items.sort(key=lambda i: (i["metadata"].get("namespace", ""), i["metadata"]["name"]))
        if _wants_table(request):
            return web.json_response(as_table(res.kind, items, str(rv)))
        meta = {"resourceVersion": str(rv)}
        return web.json_response(
            {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": items}
        )

    async def watch(self, request: web.Request, res: Resource, namespace: str | None) -> web.StreamResponse:
        labels = parse_selector(request.query.get("labelSelector"))
        fields = parse_selector(request.query.get("fieldSelector"))
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        watcher = Watcher(res, namespace, labels, fields)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        raw_rv = request.query.get("resourceVersion", "")
        self.watchers.add(watcher)
        try:
            if raw_rv in ("", "0"):
                items, start = self.store.list(res, namespace)
                for item in items:
                    if watcher.wants(res.key, item):
                        await _send(response, "ADDED", item)
            else:
                start = int(raw_rv)
                if start < self.store.oldest_rv() - 1:
                    await _send(response, "ERROR", _expired(start))
                    return response
            # Replay what happened between ``start`` and now, then stream live changes.
            for rv, resource, kind, obj in self.store.changes_since(start):
                if rv <= self.seen_rv and watcher.wants(resource, obj):
                    await _send(response, kind, obj)
            last = max(start, self.seen_rv)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    rv, kind, obj = await asyncio.wait_for(watcher.queue.get(), BOOKMARK_SECONDS)
                except TimeoutError:
                    if bookmarks:
                        mark = {"kind": res.kind, "apiVersion": res.api_version,
                                "metadata": {"resourceVersion": str(max(last, self.seen_rv))}}  # fmt: skip
                        await _send(response, "BOOKMARK", mark)
                    continue
                if rv <= last:
                    continue
                last = rv
                await _send(response, kind, obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.discard(watcher)
        return response

    async def _poller(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._poll())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _poll(self) -> None:
        """Feed watches from the shared change log (written by this or another master)."""
        while True:
            for rv, resource, kind, obj in self.store.changes_since(self.seen_rv):
                self.seen_rv = rv
                for watcher in list(self.watchers):
                    if watcher.wants(resource, obj):
                        watcher.queue.put_nowait((rv, kind, obj))
            await asyncio.sleep(POLL_SECONDS)

    async def token_request(self, request: web.Request, namespace: str, account: str) -> web.Response:
        """TokenRequest: a JWT-shaped token for the service account (``default`` always exists),
        with the requested audiences, expiry and bound object as claims; signed with a key of this
        test cluster only (nothing here verifies it)."""
        res = next(r for r in RESOURCES if r.plural == "serviceaccounts")
        if account != "default" and self.store.get(res, namespace, account) is None:
            raise ApiError(404, "NotFound", f'serviceaccounts "{account}" not found')
        body = await self._body(request)
        spec = (body or {}).get("spec") or {}
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            raise ApiError(
                422,
                "Invalid",
                "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
            )
        now = int(time.time())
        claims = {
            "aud": spec.get("audiences") or ["https://kubernetes.default.svc"],
            "exp": now + seconds,
            "iat": now,
            "sub": f"system:serviceaccount:{namespace}:{account}",
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": account},
                              "pod": spec.get("boundObjectRef") or {}},
        }  # fmt: skip

        def part(value: Any) -> str:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

        unsigned = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}"
        signature = hashlib.sha256(TOKEN_KEY + unsigned.encode()).digest()
        token = f"{unsigned}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
        expires = datetime.fromtimestamp(now + seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        answer = {**(body or {}), "status": {"token": token, "expirationTimestamp": expires}}
        return web.json_response(answer, status=201)

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json(loads=json.loads)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the request body is not JSON: {exc}") from exc

    async def create(self, request: web.Request, res: Resource, namespace: str) -> web.Response:
        obj = await self._body(request)
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if res.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
            meta["namespace"] = namespace
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_text())
        meta.pop("resourceVersion", None)
        if res.kind == "Pod":
            _pod_defaults(obj)
        _, stored = await asyncio.to_thread(
            self.store.write, res, namespace, name, lambda old: obj, create=True
        )
        return web.json_response(stored, status=201)

    async def update(
        self, request: web.Request, res: Resource, namespace: str, name: str, sub: str | None
    ) -> web.Response:
        obj = await self._body(request)
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")

        def mutate(old: dict[str, Any]) -> dict[str, Any]:
            want = (obj.get("metadata") or {}).get("resourceVersion")
            if want and want != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {res.plural} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                )
            return _merge_update(old, obj, sub)

        _, stored = await asyncio.to_thread(self.store.write, res, namespace, name, mutate)
        return web.json_response(stored)

    async def patch(
        self, request: web.Request, res: Resource, namespace: str, name: str, sub: str | None
    ) -> web.Response:
        patch = await self._body(request)
        ctype = request.content_type
        if ctype == "application/merge-patch+json":
            apply = merge_patch
        elif ctype == "application/strategic-merge-patch+json":
            apply = strategic_merge_patch
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the patch type {ctype} is not supported")

        def mutate(old: dict[str, Any]) -> dict[str, Any]:
            want = ((patch or {}).get("metadata") or {}).get("resourceVersion")
            if want and want != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{name}": stale'
                )
            return _merge_update(old, apply(old, patch), sub)

        _, stored = await asyncio.to_thread(self.store.write, res, namespace, name, mutate)
        return web.json_response(stored)

    async def delete(self, request: web.Request, res: Resource, namespace: str, name: str) -> web.Response:
        options: dict[str, Any] = {}
        if request.can_read_body:
            with contextlib.suppress(ValueError):
                options = await request.json() or {}
        grace_query = request.query.get("gracePeriodSeconds")
        grace = options.get("gracePeriodSeconds", int(grace_query) if grace_query is not None else None)

        def mutate(old: dict[str, Any]) -> dict[str, Any] | None:
            if res.kind != "Pod" or not (old.get("spec") or {}).get("nodeName"):
                return None
            period = (
                grace
                if grace is not None
                else (old.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
            )
            meta = old["metadata"]
            if period == 0:
                return None
            if meta.get("deletionTimestamp"):
                current = meta.get("deletionGracePeriodSeconds", period)
                if period >= current:
                    return old  # already terminating with a shorter or equal grace
            new = copy.deepcopy(old)
            when = datetime.now(tz=UTC) + timedelta(seconds=period)
            new["metadata"]["deletionTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            new["metadata"]["deletionGracePeriodSeconds"] = period
            return new

        _, stored = await asyncio.to_thread(self.store.write, res, namespace, name, mutate)
        return web.json_response(stored)


def _merge_update(old: dict[str, Any], new: dict[str, Any], sub: str | None) -> dict[str, Any]:
    """The stored object after an update: the status subresource changes only status; the main
    resource keeps the old status (for kinds with a status subresource) and system metadata."""
    result = copy.deepcopy(old)
    if sub == "status":
        result["status"] = copy.deepcopy(new.get("status"))
        return result
    kept_status = old.get("status")
    result = copy.deepcopy(new)
    meta = result.setdefault("metadata", {})
    for key in (
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ):
        if key in old["metadata"]:
            meta[key] = old["metadata"][key]
    result["kind"], result["apiVersion"] = old["kind"], old["apiVersion"]
    if old["kind"] in ("Pod", "Node", "Namespace"):
        if kept_status is not None:
            result["status"] = kept_status
        else:
            result.pop("status", None)
    return result


def _pod_defaults(pod: dict[str, Any]) -> None:
    """The API server's pod defaulting: the same rules vnode applies to static pods, plus the
    service account and the initial phase that only the API server sets."""
    if not isinstance(pod.get("spec"), dict):
        pod["spec"] = {}
    apply_pod_defaults(pod)
    pod["spec"].setdefault("serviceAccountName", "default")
    pod.setdefault("status", {"phase": "Pending"})


def as_table(kind: str, objects: list[dict[str, Any]], rv: str) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table, which kubectl asks for to print ``get`` output (vnode's columns)."""
    return tables.table(kind, objects, rv, datetime.now(tz=UTC))


def _wants_table(request: web.Request) -> bool:
    return tables.wants_table(request.headers.get("Accept", ""))


def _expired(rv: int) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {rv}",
        "reason": "Expired",
        "code": 410,
    }


async def _send(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


def write_kubeconfig(path: Path, server: str, pki: ClusterPki | None = None) -> None:
    """An admin kubeconfig; over TLS it carries the CA and a client certificate inline."""
    cluster: dict[str, Any] = {"server": server}
    user: dict[str, Any] = {}
    if pki is not None:
        cert, key = pki.issue("admin", server=False, organization="system:masters")
        cluster["certificate-authority-data"] = base64.b64encode(pki.ca_cert.read_bytes()).decode()
        user["client-certificate-data"] = base64.b64encode(cert.read_bytes()).decode()
        user["client-key-data"] = base64.b64encode(key.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "admin", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=1))
    tmp.replace(path)


@web.middleware
async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    """Over TLS: a client certificate signed by the cluster CA, or a known bearer token."""
    tokens: set[str] = request.app[TOKENS]
    transport = request.transport
    peer = transport.get_extra_info("peercert") if transport is not None else None
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if request.path in ("/healthz", "/readyz", "/livez", "/version") or peer or (bearer and bearer in tokens):
        response: web.StreamResponse = await handler(request)
        return response
    return status(401, "Unauthorized", "Unauthorized")


TOKENS: web.AppKey[set[str]] = web.AppKey("tokens", set)


async def serve(
    host: str, port: int, store_path: Path, kubeconfig_out: Path | None, tls: bool, tokens: set[str]
) -> None:
    from integration import bootstrapapi  # CSRs, cluster-info, bootstrap tokens

    plane = ControlPlane(Store(store_path))
    ssl_context = None
    pki = None
    bootstrap = None
    if tls:
        pki = ClusterPki(store_path)
        cert, key = pki.issue("apiserver", server=True)
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(str(cert), str(key))
        ssl_context.load_verify_locations(cafile=str(pki.ca_cert))
        ssl_context.verify_mode = ssl.CERT_OPTIONAL  # a token is the other way in
        plane.app[TOKENS] = tokens
        bootstrap = bootstrapapi.install(plane, pki)  # its gate runs before authenticate
        plane.app.middlewares.append(authenticate)
    runner = web.AppRunner(plane.app, access_log=None, handle_signals=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    bound = runner.addresses[0][1]
    scheme = "https" if tls else "http"
    if bootstrap is not None:
        bootstrap.server = f"{scheme}://{host}:{bound}"
    if kubeconfig_out is not None:
        write_kubeconfig(kubeconfig_out, f"{scheme}://{host}:{bound}", pki)
    print(f"serving on {scheme}://{host}:{bound} with store {store_path}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m integration.controlplane", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--store", default="")
    parser.add_argument("--kubeconfig-out", type=Path)
    parser.add_argument("--tls", action="store_true", help="HTTPS with a CA kept beside the store")
    parser.add_argument("--token", action="append", default=[], help="a bearer token to accept (with --tls)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    store = (
        Path(args.store.removeprefix("sqlite://")) if args.store else Path(tempfile.mkdtemp()) / "cluster.db"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(host or "127.0.0.1", int(port), store, args.kubeconfig_out, args.tls, set(args.token))
        )


if __name__ == "__main__":  # run the imported module, so that it is the one other modules see
    from integration.controlplane import main as _main

    _main()


def ensure_kubectl() -> None:
    """The tests drive the control plane with the real kubectl: install Debian's when missing."""
    import os
    import shutil
    import subprocess

    if shutil.which("kubectl") is not None:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "kubernetes-client"], check=True, env=env)


class ControlPlaneProcess:
    """One master as a subprocess, for tests: ``start``, ``kill`` (SIGKILL) and ``kubectl``."""

    def __init__(
        self, base: Path, store: Path | None = None, port: int | None = None, tls: bool = False
    ) -> None:
        self.base = base
        self.tls = tls
        self.store = store or base / "cluster.db"
        self.port = port
        self.kubeconfig = base / f"kubeconfig-{id(self)}"
        self.log_file = base / f"controlplane-{id(self)}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def client_ca(self) -> Path:
        """The CA of the clients this master sends to kubelets (its kubelet proxy): a node that
        serves it through the proxy trusts this as ``--client-ca-file``, as kubeadm sets it up."""
        return ClusterPki(self.store).ca_cert

    def node_args(self) -> list[str]:
        """What a node of this master runs with: the master, and its clients' CA."""
        return ["--master", self.url, f"--client-ca-file={self.client_ca}"]

    async def start(self) -> None:
        import socket
        import sys

        await asyncio.to_thread(ensure_kubectl)
        if self.port is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = int(s.getsockname()[1])
        log = self.log_file.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "integration.controlplane", "--listen", f"127.0.0.1:{self.port}",
                "--store", f"sqlite://{self.store}", "--kubeconfig-out", str(self.kubeconfig),
                *(["--tls"] if self.tls else []), stdout=log, stderr=log,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while not self.kubeconfig.exists():  # written once the listener is up
            if time.monotonic() > deadline or self.proc.returncode is not None:
                raise RuntimeError(f"control plane did not start: {self.log_file.read_text()[-2000:]}")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def kubectl(self, *args: str, check: bool = True, stdin: bytes | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            "kubectl", "--kubeconfig", str(self.kubeconfig), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), 90)
        except TimeoutError:
            proc.kill()
            raise AssertionError(f"kubectl {' '.join(args)} did not finish within 90s") from None
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {err.decode()}")
        return out.decode()
