"""The test control plane's TokenReview and SubjectAccessReview, with a small RBAC-like policy.

A node in Webhook mode asks the API server who a bearer token is and whether a user may do
something; these two endpoints answer as kube-apiserver does (``authentication.k8s.io/v1`` and
``authorization.k8s.io/v1``), from a policy kept in a JSON file beside the store
(``<store>.auth.json``), read at every review so a test can change it while the node runs::

    {"tokens": {"<token>": {"username": "u", "uid": "1", "groups": ["g"]}},
     "rules": [{"users": ["u"], "groups": ["g"], "verbs": ["get"],
                "resources": ["nodes/log"], "nonResourceURLs": ["/version"]}]}

Rules only allow, as RBAC's do: a rule matches a subject by user or group, a verb (``*`` for any),
and a ``resource[/subresource]`` (``*`` for any) or a non-resource URL (a trailing ``*`` is a
prefix). Built in, whatever the file says: ``system:masters`` may do everything, and the API
server's kubelet client (user ``kube-apiserver-kubelet-client``) holds
``system:kubelet-api-admin``: every verb on nodes/proxy, log, stats, metrics, healthz, pods,
configz. Each review answered is counted (``reviews``) so tests can see the node's caches work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

KUBELET_CLIENT = "kube-apiserver-kubelet-client"
KUBELET_API_ADMIN = {
    "users": [KUBELET_CLIENT],
    "verbs": ["*"],
    "resources": [f"nodes/{s}" for s in ("proxy", "log", "stats", "metrics", "healthz", "pods", "configz")],
}
MASTERS = {"groups": ["system:masters"], "verbs": ["*"], "resources": ["*"], "nonResourceURLs": ["*"]}
COUNTS: web.AppKey[dict[str, int]] = web.AppKey("auth_review_counts", dict)


def policy_path(store: Path) -> Path:
    return Path(str(store) + ".auth.json")


def write_policy(store: Path, tokens: dict[str, dict[str, Any]], rules: list[dict[str, Any]]) -> None:
    """Write the policy atomically (the control plane reads it at every review)."""
    path = policy_path(store)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"tokens": tokens, "rules": rules}))
    tmp.replace(path)


class AuthApi:
    def __init__(self, store: Path) -> None:
        self.store = store

    def policy(self) -> dict[str, Any]:
        try:
            data = json.loads(policy_path(self.store).read_text())
        except (OSError, ValueError):
            data = {}
        return {
            "tokens": data.get("tokens", {}),
            "rules": [MASTERS, KUBELET_API_ADMIN, *data.get("rules", [])],
        }

    def _count(self, request: web.Request, kind: str) -> None:
        counts = request.app[COUNTS]
        counts[kind] = counts.get(kind, 0) + 1

    async def token_review(self, request: web.Request) -> web.Response:
        self._count(request, "tokenreviews")
        review = await request.json()
        token = (review.get("spec") or {}).get("token", "")
        user = self.policy()["tokens"].get(token)
        status: dict[str, Any] = {"authenticated": user is not None}
        if user is not None:
            status["user"] = {
                "username": user["username"],
                "uid": user.get("uid", ""),
                "groups": [*user.get("groups", []), "system:authenticated"],
            }
        else:
            status["error"] = "invalid token"
        return web.json_response({**review, "status": status}, status=201)

    async def access_review(self, request: web.Request) -> web.Response:
        self._count(request, "subjectaccessreviews")
        review = await request.json()
        spec = review.get("spec") or {}
        allowed = any(_allows(rule, spec) for rule in self.policy()["rules"])
        status = {"allowed": allowed, "reason": "allowed by the test policy" if allowed else ""}
        return web.json_response({**review, "status": status}, status=201)

    async def counts(self, request: web.Request) -> web.Response:
        return web.json_response(request.app[COUNTS])


def _allows(rule: dict[str, Any], spec: dict[str, Any]) -> bool:
    groups = set(spec.get("groups") or [])
    if spec.get("user") not in rule.get("users", []) and not groups & set(rule.get("groups", [])):
        return False
    resource = spec.get("resourceAttributes")
    other = spec.get("nonResourceAttributes")
    verb = (resource or other or {}).get("verb", "")
    if "*" not in rule.get("verbs", []) and verb not in rule.get("verbs", []):
        return False
    if resource is not None:
        name = resource.get("resource", "")
        if resource.get("subresource"):
            name += "/" + resource["subresource"]
        return "*" in rule.get("resources", []) or name in rule.get("resources", [])
    path = (other or {}).get("path", "")
    for url in rule.get("nonResourceURLs", []):
        if url == path or (url.endswith("*") and path.startswith(url[:-1])):
            return True
    return False


def install(app: web.Application, store: Path) -> None:
    """Register the review endpoints (before the control plane's catch-all routes)."""
    api = AuthApi(store)
    app[COUNTS] = {}
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", api.token_review)
    app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", api.access_review)
    app.router.add_get("/debug/reviews", api.counts)
