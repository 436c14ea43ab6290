"""Keeps the control plane's OpenAPI v3 document of core/v1 for the local API.

Once per start of a joined node: ``/openapi/v3`` (the index) then the ``api/v1`` document it
names, written to the store (``openapi`` table) when its hash differs from the kept one. The
local API then serves the real schemas, so ``kubectl explain pod`` and ``kubectl apply``'s
field-validation check work against the node with the link down. About 1.3 MB once per start;
retried with back-off while the control plane is out of reach.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vnode import errors
from vnode.clients.masters import Masters
from vnode.store import Store
from vnode.store.layout import OPENAPI, OpenApiRow

log = logging.getLogger(__name__)

GROUP_VERSION = "api/v1"
FIRST_RETRY = 5.0
MAX_RETRY = 300.0


class OpenApiKeeper:
    def __init__(self, masters: Masters, store: Store) -> None:
        self.masters = masters
        self.store = store

    def kept(self) -> tuple[dict[str, Any], str] | None:
        row: OpenApiRow | None = self.store.get(OPENAPI, GROUP_VERSION)
        return (row["document"], row["hash"]) if row else None

    async def run(self) -> None:
        """Fetch until it worked once, then end."""
        delay = FIRST_RETRY
        while True:
            try:
                await self.refresh()
                return
            except (errors.Unavailable, errors.InvalidInput, errors.NotFound, KeyError, TypeError) as exc:
                log.info("OpenAPI document not kept yet: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY)

    async def refresh(self) -> None:
        index = await self.masters.request("GET", "/openapi/v3")
        url = str(index["paths"][GROUP_VERSION]["serverRelativeURL"])
        digest = url.partition("hash=")[2]
        kept = self.store.get(OPENAPI, GROUP_VERSION)
        if kept is not None and digest and kept.get("hash") == digest:
            return
        path, _, query = url.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        document = await self.masters.request("GET", path, params=params)
        try:
            await self.store.put(OPENAPI, GROUP_VERSION, OpenApiRow(hash=digest, document=document))
        except errors.StoreError as exc:
            log.warning("OpenAPI document not kept: %s", exc)
            return
        log.info("kept the control plane's OpenAPI document of %s (%s)", GROUP_VERSION, digest[:12])
