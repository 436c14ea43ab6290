"""The local API's resource table: what it serves, and how discovery describes it.

Its own module because three parts read the same table and must agree: the routes (which paths
exist), discovery (``/api/v1``: names, short names, categories, verbs, the pod subresources), and
the OpenAPI document (``vnode.api.openapi``), and the watches, which serve the same resources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The pod subresources that open a session (POST for SPDY, GET for WebSocket), not writes.
STREAM_SUBRESOURCES = ("exec", "attach", "portforward")
READ_VERBS = ["get", "list", "watch"]


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
        Resource("events", "Event", True, ("ev",)),
    )
}


def resource_list(streams: bool) -> dict[str, Any]:
    """``/api/v1``'s APIResourceList; ``streams``: whether pods/exec, attach, portforward are served."""
    items: list[dict[str, Any]] = []
    for r in RESOURCES.values():
        items.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                      "kind": r.kind, "verbs": READ_VERBS, "shortNames": [*r.short_names],
                      "categories": [*r.categories]})  # fmt: skip
        if r.plural == "pods":
            items.append({"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                          "verbs": ["get"]})  # fmt: skip
            if streams:
                items += [{"name": f"pods/{sub}", "singularName": "", "namespaced": True, "kind": "Pod",
                           "verbs": ["create", "get"]} for sub in STREAM_SUBRESOURCES]  # fmt: skip
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": items}
