"""The OpenAPI v3 documents of the local API, as kubectl fetches them.

kubectl asks ``/openapi/v3`` for the index, then the group-version document it names
(``/openapi/v3/api/v1?hash=...``): ``apply``, ``create`` and ``edit`` look there for whether the
server validates fields itself (a ``fieldValidation`` query parameter on the kind's PATCH); if it
can't tell, they refuse with "failed to download openapi" before sending anything. ``explain``
reads the kinds' schemas there.

Served: the document the control plane last gave (kept in the store by
``vnode.controllers.openapi`` while the node was joined: the real schemas, so ``kubectl explain``
works offline), else a small one written here: the read-only kinds' paths with the parameters
kubectl checks, and schemas that name each kind's top-level fields. Either way the writes that
follow get the local API's 405, which says why.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

GROUP_VERSION = "api/v1"
WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")


class Kind(Protocol):
    @property
    def plural(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def namespaced(self) -> bool: ...


def _gvk(kind: str) -> dict[str, str]:
    return {"group": "", "version": "v1", "kind": kind}


def _query(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}} for n in names]


def _ref(kind: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/io.k8s.api.core.v1.{kind}"}


def _operation(action: str, kind: str, verb: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"content": {"application/json": {"schema": _ref(kind)}}}
    operation: dict[str, Any] = {
        "operationId": f"{verb}CoreV1{kind}",
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _ref(kind)}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": _gvk(kind),
    }
    if action in ("post", "put", "patch"):
        operation["requestBody"] = body
    return operation


def _schema(kind: str, fields: Iterable[str]) -> dict[str, Any]:
    described = {
        "apiVersion": "The versioned schema of this object (v1).",
        "kind": f"The REST resource this object represents ({kind}).",
        "metadata": "The object's metadata: name, namespace, labels, annotations, uid.",
        "spec": f"The desired state of the {kind}.",
        "status": f"The {kind}'s most recently observed state.",
        "data": "The key-value data.",
    }
    return {
        "type": "object",
        "description": (
            f"{kind}, as this node's read-only local API serves it. The full schema is the control "
            "plane's: it is shown here once the node has been joined to one."
        ),
        "properties": {
            f: {
                "type": "object" if f in ("metadata", "spec", "status", "data") else "string",
                "description": described[f],
            }
            for f in fields
        },
        "x-kubernetes-group-version-kind": [_gvk(kind)],
    }


FIELDS = {
    "Pod": ("apiVersion", "kind", "metadata", "spec", "status"),
    "Node": ("apiVersion", "kind", "metadata", "spec", "status"),
    "ConfigMap": ("apiVersion", "kind", "metadata", "data"),
    "Secret": ("apiVersion", "kind", "metadata", "data"),
    "Service": ("apiVersion", "kind", "metadata", "spec", "status"),
}


def minimal_document(kinds: Iterable[Kind], version: str) -> dict[str, Any]:
    """The local API's own v3 document for ``api/v1``: paths and schemas of ``kinds``."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for k in kinds:
        base = f"/api/v1/namespaces/{{namespace}}/{k.plural}" if k.namespaced else f"/api/v1/{k.plural}"
        paths[base] = {
            "get": _operation("list", k.kind, "list", _query("labelSelector", "fieldSelector", "watch")),
            "post": _operation("post", k.kind, "create", _query(*WRITE_PARAMS)),
        }
        paths[f"{base}/{{name}}"] = {
            "get": _operation("get", k.kind, "read", []),
            "put": _operation("put", k.kind, "replace", _query(*WRITE_PARAMS)),
            "patch": _operation("patch", k.kind, "patch", _query(*WRITE_PARAMS, "force")),
            "delete": _operation("delete", k.kind, "delete", _query("dryRun", "gracePeriodSeconds")),
        }
        schemas[f"io.k8s.api.core.v1.{k.kind}"] = _schema(
            k.kind, FIELDS.get(k.kind, ("apiVersion", "kind", "metadata"))
        )
    return {
        "openapi": "3.0.0",
        "info": {"title": "vnode local API", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


class OpenApi:
    """Serves the index and the ``api/v1`` document; ``upstream`` gives the control plane's copy
    and its hash (None when the node has none)."""

    def __init__(
        self, kinds: Iterable[Kind], version: str, upstream: Callable[[], tuple[dict[str, Any], str] | None]
    ) -> None:
        self._minimal = minimal_document(kinds, version)
        self._minimal_hash = (
            hashlib.sha512(json.dumps(self._minimal, sort_keys=True).encode()).hexdigest().upper()
        )
        self._upstream = upstream

    def document(self) -> tuple[dict[str, Any], str]:
        """The ``api/v1`` document and its hash (what the index's URL carries)."""
        return self._upstream() or (self._minimal, self._minimal_hash)

    def index(self) -> dict[str, Any]:
        _, digest = self.document()
        return {"paths": {GROUP_VERSION: {"serverRelativeURL": f"/openapi/v3/{GROUP_VERSION}?hash={digest}"}}}
