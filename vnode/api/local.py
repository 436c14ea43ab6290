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
import base64
import copy
import hmac
import json
import logging
import platform
import re
import secrets
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml
from aiohttp import web

from vnode import errors
from vnode.api.server import Listener, while_connected
from vnode.api.stats import PATHS as STATS_PATHS
from vnode.api.stats import StatsHandlers
from vnode.api.streams import PORT_FORWARD, StreamHandlers
from vnode.logs.options import parse_log_query
from vnode.logs.reader import read_log
from vnode.provider.protocols import LogLocator, ObjectReader, PodLister
from vnode.security.files import write_file

log = logging.getLogger(__name__)

HISTORY = 256  # pod changes kept for watches that resume from a resourceVersion
WATCH_QUEUE = 1024  # events a slow watcher may lag behind before its stream is closed
WRITES = ("POST", "PUT", "PATCH", "DELETE")
# The pod subresources that open a session (POST for SPDY, GET for WebSocket), not writes.
STREAM_SUBRESOURCES = ("exec", "attach", "portforward")
_STREAM_PATH = re.compile(r"^/api/v1/namespaces/[^/]+/pods/[^/]+/(exec|attach|portforward)$")
CONTEXT = "vnode-local"

# -- Status errors ----------------------------------------------------------------------------

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    410: "Expired",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
}


class ApiError(errors.VnodeError):
    """An error the API answers with a metav1.Status body."""

    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or REASONS.get(code, "InternalError")

    @classmethod
    def from_vnode(cls, exc: errors.VnodeError) -> ApiError:
        return cls(errors.http_status(exc), str(exc))

    def body(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message)


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status failure, as the API server answers errors (the test control plane too)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def not_found(plural: str, name: str) -> ApiError:
    return ApiError(404, f'{plural} "{name}" not found')


# -- selectors --------------------------------------------------------------------------------

Requirement = tuple[str, str, tuple[str, ...]]  # (key, operator, values)
_REQUIREMENT = re.compile(
    r"\s*(?P<neg>!?)\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?\s*"
)
POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase")


def _split(text: str) -> list[str]:
    """Requirements separated by commas outside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def parse_selector(text: str | None, *, fields: tuple[str, ...] | None = None) -> list[Requirement]:
    """A label selector, or with ``fields`` a field selector (``=``, ``==``, ``!=`` on those fields)."""
    out: list[Requirement] = []
    for part in _split(text or ""):
        m = _REQUIREMENT.fullmatch(part)
        if m is None or (m["neg"] and (m["op"] or m["set"])):
            raise ApiError(400, f"unable to parse requirement: {part.strip()!r}")
        key = m["key"]
        if fields is not None:
            if not m["op"]:
                raise ApiError(400, f"invalid field selector: {part.strip()!r}")
            if key not in fields:
                raise ApiError(400, f'field label not supported: "{key}"')
        if m["op"]:
            out.append((key, "!=" if m["op"] == "!=" else "=", (m["value"],)))
        elif m["set"]:
            values = tuple(v.strip() for v in m["values"].split(",") if v.strip())
            out.append((key, m["set"], values))
        else:
            out.append((key, "!" if m["neg"] else "exists", ()))
    return out


def matches(values: Mapping[str, str], requirements: list[Requirement]) -> bool:
    for key, op, wanted in requirements:
        have = values.get(key)
        if op == "=" and have != wanted[0]:
            return False
        if op == "!=" and have == wanted[0]:
            return False
        if (op == "in" and have not in wanted) or (op == "notin" and have in wanted):
            return False
        if (op == "exists" and have is None) or (op == "!" and have is not None):
            return False
    return True


def field_values(obj: dict[str, Any]) -> dict[str, str]:
    meta, spec, st = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    return {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "status.phase": st.get("phase", ""),
    }


@dataclass(frozen=True)
class Filter:
    """What a list or watch asks for: a namespace (None: all) and the two selectors."""

    namespace: str | None
    labels: list[Requirement]
    fields: list[Requirement]

    def wants(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return matches(meta.get("labels") or {}, self.labels) and matches(field_values(obj), self.fields)


# -- Tables -----------------------------------------------------------------------------------


def human_age(seconds: float) -> str:
    """kubectl's HumanDuration: ``45s``, ``5m3s``, ``2h10m``, ``3d4h``, ``400d``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 120:
        return f"{max(s, 0)}s"
    m, h, d = s // 60, s // 3600, s // 86400
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y{d % 365}d" if d < 365 * 8 else f"{d // 365}y"


def _age(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_age((now - then).total_seconds())


def pod_status_text(pod: dict[str, Any]) -> str:
    """The STATUS column as kubectl prints it (the main cases of its printPod)."""
    st, spec = pod.get("status") or {}, pod.get("spec") or {}
    reason = st.get("reason") or st.get("phase") or "Pending"
    inits = spec.get("initContainers") or []
    for i, c in enumerate(st.get("initContainerStatuses") or []):
        state = c.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        if terminated:
            reason = "Init:" + (terminated.get("reason") or f"ExitCode:{terminated.get('exitCode')}")
        elif waiting and waiting.get("reason") not in (None, "PodInitializing"):
            reason = f"Init:{waiting['reason']}"
        else:
            reason = f"Init:{i}/{len(inits)}"
        break
    else:
        running = False
        for c in reversed(st.get("containerStatuses") or []):
            state = c.get("state") or {}
            if (state.get("waiting") or {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif state.get("terminated"):
                t = state["terminated"]
                reason = t.get("reason") or f"ExitCode:{t.get('exitCode')}"
            elif "running" in state and c.get("ready"):
                running = True
        if reason == "Completed" and running:
            reason = "Running"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return str(reason)


def pod_cells(pod: dict[str, Any], now: datetime) -> list[Any]:
    meta, st, spec = pod.get("metadata") or {}, pod.get("status") or {}, pod.get("spec") or {}
    statuses = st.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    finished = [
        t["finishedAt"]
        for c in statuses
        if (t := (c.get("lastState") or {}).get("terminated")) and t.get("finishedAt")
    ]
    restart_text = f"{restarts} ({_age(max(finished), now)} ago)" if restarts and finished else str(restarts)
    return [
        meta.get("name", ""),
        f"{ready}/{len(spec.get('containers') or [])}",
        pod_status_text(pod),
        restart_text,
        _age(meta.get("creationTimestamp"), now),
        st.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
    ]


def node_cells(node: dict[str, Any], now: datetime) -> list[Any]:
    meta, st = node.get("metadata") or {}, node.get("status") or {}
    ready = next((c.get("status") for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k.removeprefix(prefix) for k in meta.get("labels") or {} if k.startswith(prefix))
    addresses = {a.get("type"): a.get("address") for a in st.get("addresses") or []}
    info = st.get("nodeInfo") or {}
    return [
        meta.get("name", ""),
        state,
        ",".join(r for r in roles if r) or "<none>",
        _age(meta.get("creationTimestamp"), now),
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP") or "<none>",
        addresses.get("ExternalIP") or "<none>",
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _generic_cells(obj: dict[str, Any], now: datetime) -> list[Any]:
    meta = obj.get("metadata") or {}
    return [meta.get("name", ""), _age(meta.get("creationTimestamp"), now)]


_NAME = "The object's name."
COLUMNS: dict[str, list[tuple[str, str, int]]] = {  # kind -> (name, type, priority); 1 shows with -o wide
    "Pod": [("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "string", 0),
            ("Age", "string", 0), ("IP", "string", 1), ("Node", "string", 1)],
    "Node": [("Name", "string", 0), ("Status", "string", 0), ("Roles", "string", 0), ("Age", "string", 0),
             ("Version", "string", 0), ("Internal-IP", "string", 1), ("External-IP", "string", 1),
             ("OS-Image", "string", 1), ("Kernel-Version", "string", 1), ("Container-Runtime", "string", 1)],
}  # fmt: skip
CELLS: dict[str, Callable[[dict[str, Any], datetime], list[Any]]] = {"Pod": pod_cells, "Node": node_cells}


def wants_table(accept: str) -> bool:
    """kubectl get asks for ``application/json;as=Table;v=v1;g=meta.k8s.io`` (then plain JSON)."""
    return any(
        "as=Table" in part and "g=meta.k8s.io" in part and "v=v1beta1" not in part
        for part in accept.split(",")
    )


def table(
    kind: str, objects: list[dict[str, Any]], rv: str, now: datetime, *, columns: bool = True
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table; ``rows[].object`` is the row's PartialObjectMetadata."""
    cells = CELLS.get(kind, _generic_cells)
    result: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
    }
    if columns:
        result["columnDefinitions"] = [
            {
                "name": name,
                "type": type_,
                "format": "name" if name == "Name" else "",
                "description": _NAME if name == "Name" else "",
                "priority": priority,
            }
            for name, type_, priority in COLUMNS.get(kind, [("Name", "string", 0), ("Age", "string", 0)])
        ]
    result["rows"] = [
        {
            "cells": cells(o, now),
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o.get("metadata") or {},
            },
        }
        for o in objects
    ]
    return result


# -- this node --------------------------------------------------------------------------------


def minimal_node(
    name: str,
    ip: str,
    labels: Mapping[str, str],
    runtime_problem: str | None,
    created: str,
    version: str,
    pressure: Sequence[tuple[str, bool, str, str]] = (),
) -> dict[str, Any]:
    """The Node when the API never showed one (standalone, or not registered yet); ``pressure``:
    the pressure conditions as (type, status, reason, message)."""
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
            "nodeInfo": {"kubeletVersion": version, "operatingSystem": "linux", "architecture": arch},
        },
    }


# -- pods and their changes -------------------------------------------------------------------


class LocalPods(PodLister, LogLocator, Protocol):
    """What the local API needs of the pod manager: pods, their logs, and change notifications."""

    def add_listener(self, callback: Callable[[str], None]) -> None: ...

    def listed_pod(self, uid: str) -> dict[str, Any] | None:
        """The pod as ``list_pods`` shows it, or None when it is not listed (gone or deleting)."""
        ...


@dataclass
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    previous: dict[str, Any] | None  # the object before (MODIFIED), to tell filters what changed


class _Watcher:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(WATCH_QUEUE)
        self.closed = False

    def put(self, event: Event | None) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.closed = True  # too far behind: end the stream; the client re-watches (or re-lists)


class PodHistory:
    """The pods as served (with resourceVersions), the last ``HISTORY`` changes, and the watchers.

    ``sync`` diffs ``list_pods()`` against what was served before every list, and ``sync_one``
    diffs the one pod a listener call names (a full diff per status change made starting N pods
    cost O(N^2)), so a list's resourceVersion and the events after it always agree.
    """

    def __init__(self, pods: LocalPods, keep: int = HISTORY) -> None:
        self.pods = pods
        self.rv = 0
        self._raw: dict[str, dict[str, Any]] = {}  # uid -> the pod as listed (deep copy)
        self._served: dict[str, dict[str, Any]] = {}  # uid -> the pod with kind and resourceVersion
        self._events: deque[Event] = deque(maxlen=keep)
        self._watchers: set[_Watcher] = set()
        pods.add_listener(self.sync_one)

    def sync_one(self, uid: str) -> None:
        pod = self.pods.listed_pod(uid)
        if pod is None:
            if uid in self._served:
                del self._raw[uid]
                self._emit("DELETED", uid, self._served.pop(uid), None)
            return
        if self._raw.get(uid) == pod:
            return
        previous = self._served.get(uid)
        raw = self._raw[uid] = copy.deepcopy(pod)
        self._emit("ADDED" if previous is None else "MODIFIED", uid, raw, previous)

    def sync(self) -> None:
        current = {p["metadata"]["uid"]: p for p in self.pods.list_pods()}
        for uid in [u for u in self._served if u not in current]:
            del self._raw[uid]
            self._emit("DELETED", uid, self._served.pop(uid), None)
        for uid, pod in current.items():
            if self._raw.get(uid) == pod:
                continue
            previous = self._served.get(uid)
            raw = self._raw[uid] = copy.deepcopy(pod)  # never mutated: served objects share its parts
            self._emit("ADDED" if previous is None else "MODIFIED", uid, raw, previous)

    def _emit(self, type_: str, uid: str, pod: dict[str, Any], previous: dict[str, Any] | None) -> None:
        self.rv += 1
        meta = {**pod.get("metadata", {}), "resourceVersion": str(self.rv)}
        obj = {**pod, "kind": "Pod", "apiVersion": "v1", "metadata": meta}
        if type_ != "DELETED":
            self._served[uid] = obj
        event = Event(self.rv, type_, obj, previous)
        self._events.append(event)
        for watcher in self._watchers:
            watcher.put(event)

    def snapshot(self) -> tuple[list[dict[str, Any]], int]:
        self.sync()
        items = sorted(
            self._served.values(), key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])
        )
        return items, self.rv

    def since(self, rv: int) -> list[Event] | None:
        """The changes after ``rv``, or None when they are not all known (410 Expired)."""
        first = self._events[0].rv if self._events else self.rv + 1
        if rv > self.rv or rv < first - 1:
            return None
        return [e for e in self._events if e.rv > rv]

    def subscribe(self) -> _Watcher:
        watcher = _Watcher()
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: _Watcher) -> None:
        self._watchers.discard(watcher)

    def close(self) -> None:
        """End every watch stream (the listener is closing)."""
        for watcher in self._watchers:
            watcher.closed = True
            watcher.put(None)


def filtered(event: Event, wanted: Filter) -> tuple[str, dict[str, Any]] | None:
    """The event a filtered watch sees: an object leaving the filter is DELETED, one entering ADDED."""
    now = wanted.wants(event.obj)
    before = event.previous is not None and wanted.wants(event.previous)
    if event.type == "MODIFIED" and now != before:
        return ("ADDED", event.obj) if now else ("DELETED", event.obj)
    return (event.type, event.obj) if now else None


# -- the application --------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()  # "all": what ``kubectl get all`` lists


RESOURCES = {
    r.plural: r
    for r in (
        Resource("pods", "Pod", True, ("po",), ("all",)),
        Resource("nodes", "Node", False, ("no",)),
        Resource("configmaps", "ConfigMap", True, ("cm",)),
        Resource("secrets", "Secret", True),
        Resource("services", "Service", True, ("svc",), ("all",)),
    )
}
READ_VERBS = ["get", "list", "watch"]


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


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


class LocalApi:
    """The routes of the read-only API over ``LocalSources``."""

    def __init__(self, sources: LocalSources) -> None:
        self.sources = sources
        self.history = PodHistory(sources.pods)
        self.app = web.Application(middlewares=[self._guard])
        self.app.router.add_route("*", "/{path:.*}", self.dispatch)
        self._closing = asyncio.Event()
        self.app.on_shutdown.append(self._close_streams)

    async def _close_streams(self, app: web.Application) -> None:
        self._closing.set()
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
        if parts == ["apis"]:
            return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if parts == ["api", "v1"]:
            return _json(self.resource_list())
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

    def resource_list(self) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        for r in RESOURCES.values():
            items.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                          "kind": r.kind, "verbs": READ_VERBS, "shortNames": [*r.short_names],
                          "categories": [*r.categories]})  # fmt: skip
            if r.plural == "pods":
                items.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                              "verbs": ["get"]})  # fmt: skip
                if self.sources.streams is not None:
                    items += [{"name": f"pods/{sub}", "singularName": "", "namespaced": True, "kind": "Pod",
                               "verbs": ["create", "get"]} for sub in STREAM_SUBRESOURCES]  # fmt: skip
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": items}

    def _items(self, resource: Resource, namespace: str | None) -> tuple[list[dict[str, Any]], int]:
        if resource.plural == "pods":
            return self.history.snapshot()
        if resource.plural == "nodes":
            return [self._node()], self.history.rv
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
        fields = POD_FIELDS if resource.plural == "pods" else ("metadata.name", "metadata.namespace")
        wanted = Filter(
            namespace,
            parse_selector(query.get("labelSelector")),
            parse_selector(query.get("fieldSelector"), fields=fields),
        )
        if query.get("watch") in ("1", "true"):
            return await self.watch(request, resource, wanted, as_table)
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
        else:
            obj = self.sources.objects.read_object(resource.plural, namespace, name)
            if obj is not None:
                return obj
        raise not_found(resource.plural, name)

    async def watch(
        self, request: web.Request, resource: Resource, wanted: Filter, as_table: bool
    ) -> web.StreamResponse:
        """JSON lines of watch events: the current items (or the changes since ``resourceVersion``),
        then live pod changes until ``timeoutSeconds``, the client leaving, or shutdown."""
        try:
            timeout = float(request.query.get("timeoutSeconds") or 1800)
        except ValueError:
            raise ApiError(400, "timeoutSeconds: invalid value") from None
        raw_rv = request.query.get("resourceVersion") or "0"
        if not raw_rv.isdigit():
            raise ApiError(400, f"invalid resourceVersion {raw_rv!r}")
        watcher = self.history.subscribe() if resource.plural == "pods" else None
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        first = True

        async def send(type_: str, obj: dict[str, Any]) -> None:
            nonlocal first
            if as_table and type_ != "ERROR":
                obj = table(resource.kind, [obj], obj["metadata"].get("resourceVersion", ""),
                            datetime.now(tz=UTC), columns=first)  # fmt: skip
                first = False
            await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        try:
            await response.prepare(request)
            start = int(raw_rv)
            if start == 0 or watcher is None:
                items, last = self._items(resource, wanted.namespace)
                for item in items:
                    if wanted.wants(item):
                        await send("ADDED", item)
            else:
                replay = self.history.since(start)
                if replay is None:
                    expired = status_body(
                        410, "Expired", f"too old resource version: {start} ({self.history.rv})"
                    )
                    await send("ERROR", expired)
                    return response
                last = start
                for event in replay:
                    if (seen := filtered(event, wanted)) is not None:
                        await send(*seen)
                    last = event.rv
            async with asyncio.timeout(timeout):
                if watcher is None:
                    # no change feed: hold the stream until the end
                    await while_connected(request, self._closing.wait())
                    return response
                while True:
                    change = await while_connected(request, watcher.queue.get())
                    if change is None or (watcher.closed and watcher.queue.empty()):
                        break
                    if change.rv <= last:
                        continue
                    last = change.rv
                    if (seen := filtered(change, wanted)) is not None:
                        await send(*seen)
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            if watcher is not None:
                self.history.unsubscribe(watcher)
        return response

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


def ensure_token(path: Path) -> str:
    """The bearer token kept in ``path`` (0600), generated when missing or unreadable."""
    try:
        token = path.read_text().strip()
        if len(token) >= 32 and path.stat().st_mode & 0o077 == 0:
            return token
    except OSError:
        pass
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(path, token.encode() + b"\n")
    return token


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def is_self_signed(pem: str) -> bool:
    """Whether the first certificate's issuer is its subject (so it can be its own CA)."""
    match = re.search(r"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----", pem)
    if match is None:
        return False
    try:
        der = ssl.PEM_cert_to_DER_cert(match.group(0))
        _, cert, _ = _der(der, 0)
        _, pos, end = _der(der, cert)  # TBSCertificate
        fields: list[bytes] = []
        while pos < end:
            tag, _, next_pos = _der(der, pos)
            if not (tag == 0xA0 and not fields):  # the explicit version comes first, if at all
                fields.append(der[pos:next_pos])
            pos = next_pos
        return len(fields) >= 5 and fields[2] == fields[4]  # serial, algorithm, issuer, validity, subject
    except (ValueError, IndexError):
        return False


def kubeconfig(server: str, cert_pem: str, token: str) -> dict[str, Any]:
    """The ``vnode-local`` kubeconfig: a self-signed serving cert is its own CA, otherwise no verify."""
    cluster: dict[str, Any] = {"server": server}
    if is_self_signed(cert_pem):
        cluster["certificate-authority-data"] = base64.b64encode(cert_pem.encode()).decode()
    else:
        cluster["insecure-skip-tls-verify"] = True
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": CONTEXT, "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT}}],
        "current-context": CONTEXT,
    }


def server_url(address: str, port: int) -> str:
    """The URL a local client uses: a wildcard bind is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def write_kubeconfig(path: Path, server: str, cert_pem: str, token: str) -> None:
    header = b"# Written by vnode at start: its read-only local API (see vnode.api.local).\n"
    write_file(path, header + yaml.safe_dump(kubeconfig(server, cert_pem, token), sort_keys=False).encode())


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
