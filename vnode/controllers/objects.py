"""The configMaps and secrets pods refer to, fetched from the API and kept for a short while.

Workers ask through the ``ObjectSource`` protocol when they start containers and when they
refresh mounted files. An object is fetched again once it is older than ``TTL_SECONDS`` (kubelet's
"Cache" change-detection strategy), so an update reaches the mounted files within TTL plus the
worker's refresh period. While no master answers, the last copy is served: a node cut off from the
control plane keeps starting its pods with what it knew.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from vnode import errors
from vnode.clients.masters import Masters

log = logging.getLogger(__name__)

TTL_SECONDS = 15.0


class ObjectCache:
    def __init__(self, masters: Masters) -> None:
        self.masters = masters
        self._cache: dict[tuple[str, str, str], tuple[float, dict[str, Any] | None]] = {}

    async def get_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (kind, namespace, name)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < TTL_SECONDS:
            return cached[1]
        try:
            obj: dict[str, Any] | None = await self.masters.request(
                "GET", f"/api/v1/namespaces/{namespace}/{kind}/{name}"
            )
        except errors.NotFound:
            obj = None
        except errors.Unavailable:
            if cached is not None:
                log.debug("serving the cached %s %s/%s: no master answers", kind, namespace, name)
                return cached[1]
            raise
        self._cache[key] = (now, obj)
        return obj

    async def token(self, pod: dict[str, Any], audience: str, expiration_seconds: int) -> tuple[str, float]:
        """TokenRequest for the pod's service account, bound to the pod."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        namespace = meta.get("namespace", "default")
        account = spec.get("serviceAccountName") or "default"
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
        answer = await self.masters.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", body=body
        )
        status = answer.get("status") or {}
        return str(status["token"]), float(expiration_seconds)
