"""The configMaps, secrets and tokens pods refer to: fetched from the API, kept durably for offline.

Workers ask through the ``ObjectSource`` protocol when they start containers and when they
refresh mounted files. Changes are detected as kubelet's default "Watch" strategy does: after the
first GET of an object, a watch on that one object (``fieldSelector=metadata.name=<name>``, which
the Node authorizer permits for objects the node's pods reference) keeps the copy current, so
refreshing the files costs the API server nothing. A watch resumes from its last resourceVersion
when the server ends it (after a randomized 30-60 minutes, bookmarks keeping the version fresh),
GETs the object again only on 410 Gone, and ends once no pod has asked for the object for
``UNUSED_SECONDS``. At most ``MAX_WATCHES`` are open (over HTTPS they are streams of the node's
one HTTP/2 connection; to a plain ``http://`` master, a connection each); objects past that,
missing objects, and objects whose watch is broken (no master answers) are fetched again once
older than ``TTL_SECONDS`` (kubelet's "Cache" strategy), as all objects were before.

Every answer is also written to the store's ``objects`` table before the worker acts on it, but
only when it changed (another UID or resourceVersion, or created or deleted), so a steady node
writes nothing. While no master answers, the last copy is served, from memory or, after vnode
restarted offline, from the store: a node cut off from the control plane keeps (re)starting its
pods with what it knew, and an object known deleted stays deleted. Secrets and tokens are sealed
on disk (``vnode.security.sealing``); a token is served offline only until it expires.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vnode import errors
from vnode.clients.masters import Masters
from vnode.security.sealing import Sealer
from vnode.store import Store
from vnode.store.layout import OBJECTS

log = logging.getLogger(__name__)

TTL_SECONDS = 15.0
MAX_WATCHES = 64  # object watches per node (streams of the node's one HTTP/2 connection)
WATCH_SECONDS = (1800, 3600)  # a watch's timeoutSeconds, drawn from this range
UNUSED_SECONDS = 300.0  # a watch for an object no worker asked about for this long ends
MAX_BACKOFF = 30.0
TOKEN_REUSE = 0.25  # a kept token is used again while more than this part of its lifetime is left
SEALED_KINDS = ("secrets",)

Obj = dict[str, Any]


def _version(obj: Obj | None) -> tuple[str, str] | None:
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    return str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))


@dataclass
class _Watch:
    """One object's watch: ``live`` while its stream is open (the cached copy is then current)."""

    kind: str
    namespace: str
    name: str
    used: float
    live: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class ObjectCache:
    """See the module docstring; ``store=None`` keeps copies in memory only; ``watches`` is the
    client the watches use (the request client itself, or one of their own that ``close``
    releases), and None falls back to fetching after ``TTL_SECONDS``."""

    def __init__(
        self,
        masters: Masters,
        store: Store | None = None,
        sealer: Sealer | None = None,
        *,
        watches: Masters | None = None,
    ) -> None:
        self.masters = masters
        self.store = store
        self.sealer = sealer
        self.watcher = watches
        self._cache: dict[str, tuple[float, Obj | None]] = {}
        self._watches: dict[str, _Watch] = {}
        self._listeners: list[Callable[[str, str, str], None]] = []
        self.writes = 0  # store writes, for tests and benchmarks

    def add_listener(self, callback: Callable[[str, str, str], None]) -> None:
        """``callback(kind, namespace, name)`` runs when a watch brings a new version of an object."""
        self._listeners.append(callback)

    def watched(self, kind: str, namespace: str, name: str) -> bool:
        watch = self._watches.get(f"{kind}/{namespace}/{name}")
        return watch is not None and watch.live

    async def close(self) -> None:
        """End every watch (the node is stopping) and release a watch client of their own."""
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()
        if self.watcher is not None and self.watcher is not self.masters:
            await self.watcher.close()

    async def get_object(self, kind: str, namespace: str, name: str) -> Obj | None:
        key = f"{kind}/{namespace}/{name}"
        cached = self._cache.get(key)
        now = time.monotonic()
        watch = self._watches.get(key)
        if watch is not None:
            watch.used = now
            if watch.live and cached is not None:
                return cached[1]
        if cached is not None and now - cached[0] < TTL_SECONDS:
            return cached[1]
        try:
            obj: Obj | None = await self.masters.request(
                "GET", f"/api/v1/namespaces/{namespace}/{kind}/{name}"
            )
        except errors.NotFound:
            obj = None
        except errors.Unavailable:
            if cached is None:
                found, stored = self._load(key)
                if not found:
                    raise
                cached = (now - TTL_SECONDS, stored)  # known, but ask the API again next time
                self._cache[key] = cached
            log.debug("serving the cached %s: no master answers", key)
            return cached[1]
        if cached is not None:
            changed = _version(cached[1]) != _version(obj)
        else:  # first fetch since the start: compare with what the store kept
            found, stored = self._load(key)
            changed = not found or _version(stored) != _version(obj)
        self._cache[key] = (now, obj)
        if changed:
            await self._save(key, obj, sealed=kind in SEALED_KINDS and obj is not None)
        if obj is not None and watch is None:
            self._start_watch(key, kind, namespace, name, str(obj["metadata"].get("resourceVersion", "")))
        return obj

    # -- watching one object -------------------------------------------------------------------

    def _start_watch(self, key: str, kind: str, namespace: str, name: str, rv: str) -> None:
        if self.watcher is None or len(self._watches) >= MAX_WATCHES or not rv:
            return
        watch = self._watches[key] = _Watch(kind, namespace, name, used=time.monotonic())
        watch.task = asyncio.get_running_loop().create_task(self._follow(key, watch, rv), name=f"watch:{key}")

    async def _follow(self, key: str, watch: _Watch, rv: str) -> None:
        """Keep ``key``'s copy current until nobody asks for it; see the module docstring."""
        assert self.watcher is not None
        path = f"/api/v1/namespaces/{watch.namespace}/{watch.kind}"
        delay = 0.5
        try:
            while time.monotonic() - watch.used < UNUSED_SECONDS:
                params = {
                    "fieldSelector": f"metadata.name={watch.name}",
                    "resourceVersion": rv,
                    "timeoutSeconds": str(random.randint(*WATCH_SECONDS)),
                }
                try:
                    watch.live = True
                    async for event in self.watcher.watch(path, params):
                        rv = await self._apply(key, watch, event) or rv
                        if time.monotonic() - watch.used >= UNUSED_SECONDS:
                            return
                    delay = 0.5  # the server ended it (timeoutSeconds): resume from ``rv``
                except errors.Expired:  # the version is too old; fetch the object again
                    watch.live = False
                    try:
                        obj = await self.masters.request("GET", f"{path}/{watch.name}")
                    except errors.NotFound:
                        await self._update(key, None)
                        return  # deleted: a later get_object fetches (and watches) it again
                    await self._update(key, obj)
                    rv = str(obj["metadata"].get("resourceVersion", ""))
                except errors.VnodeError as exc:
                    watch.live = False
                    log.debug("watch of %s broke (%s); again in %.1fs", key, exc, delay)
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, MAX_BACKOFF)
        finally:
            watch.live = False
            if self._watches.get(key) is watch:
                del self._watches[key]

    async def _apply(self, key: str, watch: _Watch, event: Obj) -> str | None:
        """One watch event; returns the resourceVersion it brings (None for none)."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise errors.Expired(str(obj.get("message", "410 Gone")))
            raise errors.Unavailable(f"watch error: {obj.get('message', obj)}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        changed = kind in ("ADDED", "MODIFIED", "DELETED") and await self._update(
            key, obj if kind != "DELETED" else None
        )
        for callback in self._listeners if changed else []:
            try:
                callback(watch.kind, watch.namespace, watch.name)
            except Exception:
                log.exception("object listener failed")
        return str(rv) if rv else None

    async def _update(self, key: str, obj: Obj | None) -> bool:
        """Keep ``obj`` as ``key``'s copy; True if it is another version than the one kept."""
        cached = self._cache.get(key)
        self._cache[key] = (time.monotonic(), obj)
        if cached is None or _version(cached[1]) != _version(obj):
            sealed = key.split("/", 1)[0] in SEALED_KINDS and obj is not None
            await self._save(key, obj, sealed=sealed)
            return True
        return False

    async def token(self, pod: Obj, audience: str, expiration_seconds: int) -> tuple[str, float]:
        """TokenRequest for the pod's service account, bound to the pod; offline, the last token
        issued for it while it has not expired. A token kept from before a restart is used again
        while more than ``TOKEN_REUSE`` of its lifetime is left (workers ask at 80%, so this is
        only ever a restart), so that re-adopting N pods costs no N TokenRequests and no N volume
        rewrites."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        namespace = meta.get("namespace", "default")
        account = spec.get("serviceAccountName") or "default"
        key = f"tokens/{namespace}/{meta['uid']}/{audience}/{expiration_seconds}"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        found, stored = self._load(key)
        left = float((stored or {}).get("expires", 0)) - time.time()
        if found and stored is not None and left > TOKEN_REUSE * expiration_seconds:
            return str(stored["token"]), left
        try:
            answer = await self.masters.request(
                "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", body=body
            )
        except errors.Unavailable:
            if not found or stored is None or left <= 0:
                raise
            return str(stored["token"]), left
        token = str((answer.get("status") or {})["token"])
        await self._save(key, {"token": token, "expires": time.time() + expiration_seconds}, sealed=True)
        return token, float(expiration_seconds)

    # -- reading what is kept (the local API's ObjectReader) ----------------------------------

    def read_object(self, kind: str, namespace: str, name: str) -> Obj | None:
        """The object as last known, without asking the control plane."""
        return self._load(f"{kind}/{namespace}/{name}")[1]

    def list_objects(self, kind: str, namespace: str | None) -> list[Obj]:
        """Every kept object of ``kind`` (in ``namespace``, or all), known to exist."""
        if self.store is None or kind == "tokens":
            return []
        prefix = f"{kind}/" + (f"{namespace}/" if namespace is not None else "")
        keys = [key for key, _ in self.store.items(OBJECTS) if key.startswith(prefix)]
        return [obj for obj in (self._load(key)[1] for key in keys) if obj is not None]

    # -- the store ---------------------------------------------------------------------------

    def _load(self, key: str) -> tuple[bool, Obj | None]:
        """(found, value) from the store; a value that does not open counts as not found."""
        if self.store is None:
            return False, None
        try:
            row = self.store.get(OBJECTS, key)
            if row is None:
                return False, None
            if "sealed" in row:
                if self.sealer is None:
                    return False, None
                return True, json.loads(self.sealer.open(row["sealed"], key))
            return True, row.get("object")
        except errors.StoreError as exc:
            log.warning("cached %s is unreadable: %s", key, exc)
            return False, None

    async def _save(self, key: str, value: Obj | None, *, sealed: bool) -> None:
        """Keep ``value`` (None: known absent), sealed if asked; a full store only costs the
        offline copy."""
        if self.store is None:
            return
        if not sealed:
            row: Obj = {"object": value}
        elif self.sealer is not None:
            row = {"sealed": self.sealer.seal(json.dumps(value).encode(), key)}
        else:
            return  # never write a secret in the clear
        try:
            await self.store.put(OBJECTS, key, row)
            self.writes += 1
        except errors.StoreError as exc:
            log.warning("%s not kept for offline use: %s", key, exc)
