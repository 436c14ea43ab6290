"""The configMaps, secrets and tokens pods refer to: fetched from the API, kept durably for offline.

Workers ask through the ``ObjectSource`` protocol when they start containers and when they
refresh mounted files. An object is fetched again once it is older than ``TTL_SECONDS`` (kubelet's
"Cache" change-detection strategy), so an update reaches the mounted files within TTL plus the
worker's refresh period.

Every answer is also written to the store's ``objects`` table before the worker acts on it, but
only when it changed (another UID or resourceVersion, or created or deleted), so a steady node
writes nothing. While no master answers, the last copy is served, from memory or, after vnode
restarted offline, from the store: a node cut off from the control plane keeps (re)starting its
pods with what it knew, and an object known deleted stays deleted. Secrets and tokens are sealed
on disk (``vnode.security.sealing``); a token is served offline only until it expires.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from vnode import errors
from vnode.clients.masters import Masters
from vnode.security.sealing import Sealer
from vnode.store import Store

log = logging.getLogger(__name__)

TTL_SECONDS = 15.0
TABLE = "objects"
SEALED_KINDS = ("secrets",)

Obj = dict[str, Any]


def _version(obj: Obj | None) -> tuple[str, str] | None:
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    return str(meta.get("uid", "")), str(meta.get("resourceVersion", ""))


class ObjectCache:
    """See the module docstring; ``store=None`` keeps copies in memory only."""

    def __init__(self, masters: Masters, store: Store | None = None, sealer: Sealer | None = None) -> None:
        self.masters = masters
        self.store = store
        self.sealer = sealer
        self._cache: dict[str, tuple[float, Obj | None]] = {}
        self.writes = 0  # store writes, for tests and benchmarks

    async def get_object(self, kind: str, namespace: str, name: str) -> Obj | None:
        key = f"{kind}/{namespace}/{name}"
        cached = self._cache.get(key)
        now = time.monotonic()
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
        return obj

    async def token(self, pod: Obj, audience: str, expiration_seconds: int) -> tuple[str, float]:
        """TokenRequest for the pod's service account, bound to the pod; offline, the last token
        issued for it while it has not expired."""
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
        try:
            answer = await self.masters.request(
                "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", body=body
            )
        except errors.Unavailable:
            found, stored = self._load(key)
            left = float((stored or {}).get("expires", 0)) - time.time()
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
        keys = [key for key, _ in self.store.items(TABLE) if key.startswith(prefix)]
        return [obj for obj in (self._load(key)[1] for key in keys) if obj is not None]

    # -- the store ---------------------------------------------------------------------------

    def _load(self, key: str) -> tuple[bool, Obj | None]:
        """(found, value) from the store; a value that does not open counts as not found."""
        if self.store is None:
            return False, None
        try:
            row = self.store.get(TABLE, key)
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
            await self.store.put(TABLE, key, row)
            self.writes += 1
        except errors.StoreError as exc:
            log.warning("%s not kept for offline use: %s", key, exc)
