"""The stats and metrics endpoints: ``/stats/summary``, ``/metrics/resource``, ``/metrics`` and
``/metrics/probes``.

Served on the kubelet API (authorized as subresource ``stats`` and ``metrics``) and through the
local API as the API server routes them, ``/api/v1/nodes/<node>/proxy/<path>`` (authorized there as
``nodes/proxy``), so that ``kubectl get --raw`` works against the node with the control plane gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from vnode import errors
from vnode.metrics import resource
from vnode.metrics.node import CONTENT_TYPE, NodeMetrics
from vnode.stats.collector import SnapshotSource
from vnode.stats.summary import build_summary

PATHS = ("stats/summary", "metrics/resource", "metrics", "metrics/probes")


@dataclass
class StatsHandlers:
    stats: SnapshotSource
    metrics: NodeMetrics
    node_name: str
    probes: Callable[[], bytes] | None = None  # /metrics/probes (vnode.probes), None: not served

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/" + path, self._handler(path)) for path in PATHS]

    def _handler(self, path: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self.serve(request, path)

        return handle

    async def serve(self, request: web.Request, path: str) -> web.Response:
        """``path`` (one of ``PATHS``) for ``request``; 404 for anything else."""
        if path == "stats/summary":
            only = request.query.get("only_cpu_and_memory", "").lower() == "true"
            snapshot = await self.stats.snapshot(files=not only)
            return web.json_response(build_summary(snapshot, self.node_name, only_cpu_and_memory=only))
        if path == "metrics/resource":
            snapshot = await self.stats.snapshot(files=False)
            text = resource.render(snapshot)
            return web.Response(body=text.encode(), headers={"Content-Type": resource.CONTENT_TYPE})
        if path == "metrics/probes" and self.probes is not None:
            return web.Response(body=self.probes(), headers={"Content-Type": CONTENT_TYPE})
        if path == "metrics":
            return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
        raise errors.NotFound(f"no such path: /{path}")
