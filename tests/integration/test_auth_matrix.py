"""The authorization matrix against a real node: identities x endpoints x methods, with curl,
openssl and kubectl, the node in Webhook mode against the real API server (TokenReview and
SubjectAccessReview decided by its authenticators and RBAC; tokens are service accounts' tokens).

Every cell's 401/403 is exact (kubelet's codes and texts). A request that passes the filter gets
whatever the route answers (200, 404, 405 ...); those cells must equal what the API server's
kubelet-client certificate gets, which the test also pins for the routes that exist today.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from integration.kube.pki import Authority
from integration.kube.view import ClusterView
from integration.node import VnodeProcess
from vnode.security.authz import kubelet_attributes

NODE = "edge1"
PATHS = [
    "/healthz",
    "/healthz/ping",
    "/pods",
    "/runningpods/",
    "/stats/summary",
    "/stats/summary?only_cpu_and_memory=true",
    "/metrics",
    "/metrics/resource",
    "/logs/",
    "/configz",
    "/containerLogs/default/nopod/main",
    "/exec/default/nopod/main?command=true&output=1",
    "/portForward/default/nopod?port=80",
    "/run/default/nopod/main?cmd=true",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
RULES = {  # service account -> (verbs, subresources) granted by a ClusterRole of the test's
    "log-reader": (["get"], ["nodes/log"]),
    "proxy-user": (["get"], ["nodes/proxy"]),
    "metrics-reader": (["get"], ["nodes/metrics"]),
}
KUBELET_CLIENT = "kube-apiserver-kubelet-client"  # bound to system:kubelet-api-admin, as kubeadm does


@dataclass
class Identity:
    name: str
    curl: list[str]
    user: str | None  # None: not authenticated (401) or refused at TLS (see tls_fails)
    tls_fails: bool = False
    grants: str = ""  # the RULES entry that applies


def expected_filter(identity: Identity, method: str, path: str) -> int | None:
    """401/403 as kubelet answers them, or None when the request passes the filter."""
    if identity.user is None:
        return 401
    if identity.user == KUBELET_CLIENT:
        return None
    verbs, resources = RULES.get(identity.grants, ([], []))
    for attributes in kubelet_attributes(method, path.split("?")[0], NODE):
        if attributes.verb in verbs and f"nodes/{attributes.subresource}" in resources:
            return None
    return 403


async def run(*command: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def curl(node: VnodeProcess, identity: Identity, method: str, path: str) -> tuple[int, str]:
    """(HTTP status, body) with curl; status 0 when the TLS handshake failed."""
    method_args = ["-I"] if method == "HEAD" else ["-X", method]
    _, out, _ = await run(
        "curl", "-sk", "--max-time", "20", *method_args, *identity.curl,
        "-o", "/dev/stdout", "-w", "\n%{http_code}", f"https://127.0.0.1:{node.port}{path}",
    )  # fmt: skip
    body, _, status = out.rpartition("\n")
    return int(status or 0), body


@pytest.fixture
async def setup(
    containerd: Any, cluster: ClusterView, tmp_path: Path
) -> AsyncIterator[tuple[VnodeProcess, list[Identity], Path]]:
    for tool in ("curl", "openssl"):
        assert shutil.which(tool), f"{tool} is needed"
    tokens: dict[str, str] = {}
    objects: list[dict[str, Any]] = []
    for account, (verbs, resources) in RULES.items():
        role = f"{cluster.namespace}-{account}"
        objects += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
             "rules": [{"apiGroups": [""], "resources": resources, "verbs": verbs}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": role},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
             "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": cluster.namespace}]},
        ]  # fmt: skip
    body = {"apiVersion": "v1", "kind": "List", "items": objects}
    await cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body).encode())
    for account in RULES:
        tokens[account] = (await cluster.kubectl("create", "token", account)).strip()
    node = VnodeProcess(tmp_path, containerd.endpoint, node_name=NODE, extra_args=cluster.node_args(NODE))
    await node.start()

    def cert(path: tuple[Path, Path]) -> list[str]:
        return ["--cert", str(path[0]), "--key", str(path[1])]

    ca = cluster.kube.pki.ca
    other = Authority(tmp_path, "other-ca", "another CA")

    def account(name: str) -> str:
        return f"system:serviceaccount:{cluster.namespace}:{name}"

    identities = [
        Identity("no credentials", [], None),
        Identity("another CA",
                 cert(other.issue("stranger", "stranger", organizations=("system:masters",))),
                 None, True),
        Identity("no rights",
                 cert(ca.issue(f"nobody-{cluster.namespace}", "nobody", organizations=("nogroup",))),
                 "nobody"),
        Identity("token nodes/log", ["-H", f"Authorization: Bearer {tokens['log-reader']}"],
                 account("log-reader"), grants="log-reader"),
        Identity("token nodes/proxy", ["-H", f"Authorization: Bearer {tokens['proxy-user']}"],
                 account("proxy-user"), grants="proxy-user"),
        Identity("token nodes/metrics", ["-H", f"Authorization: Bearer {tokens['metrics-reader']}"],
                 account("metrics-reader"), grants="metrics-reader"),
        Identity("kubelet client", cert(cluster.kube.pki.kubelet_client), KUBELET_CLIENT),
        Identity("bad token", ["-H", "Authorization: Bearer forged"], None),
    ]  # fmt: skip
    try:
        yield node, identities, tmp_path
    finally:
        await node.terminate()
        roles = ",".join(f"{cluster.namespace}-{a}" for a in RULES)
        await cluster.kubectl("delete", "clusterrole,clusterrolebinding", roles, check=False)


async def test_authorization_matrix(setup: tuple[VnodeProcess, list[Identity], Path]) -> None:
    node, identities, _ = setup
    admin = next(i for i in identities if i.user == KUBELET_CLIENT)
    routed = {(m, p): await curl(node, admin, m, p) for p in PATHS for m in METHODS}
    # what exists today answers as kubelet does once authorized
    assert routed[("GET", "/healthz")] == (200, "ok")
    assert routed[("GET", "/pods")][0] == 200 and json.loads(routed[("GET", "/pods")][1])["kind"] == "PodList"
    assert routed[("POST", "/pods")][0] == 405
    assert routed[("GET", "/containerLogs/default/nopod/main")][0] == 404
    code, body = routed[("GET", "/stats/summary")]
    assert code == 200 and json.loads(body)["node"]["nodeName"] == NODE
    code, body = routed[("GET", "/metrics/resource")]
    assert code == 200 and "resource_scrape_error" in body
    code, body = routed[("GET", "/metrics")]
    assert code == 200 and "kubelet_running_pods" in body
    assert routed[("POST", "/metrics")][0] == 405
    failures = []
    cells = 0
    for identity in identities:
        for path in PATHS:
            for method in METHODS:
                status, body = await curl(node, identity, method, path)
                cells += 1
                if identity.tls_fails:
                    want: Any = 0
                else:
                    want = expected_filter(identity, method, path) or routed[(method, path)][0]
                if status != want:
                    failures.append(
                        f"{identity.name}: {method} {path} -> {status} (want {want}) {body[:80]!r}"
                    )
                elif status == 401 and method != "HEAD":
                    assert body == "Unauthorized", body
                elif status == 403 and method != "HEAD" and identity.user:
                    assert body.startswith(f"Forbidden (user={identity.user}, verb="), body
    assert not failures, f"{len(failures)} of {cells} cells differ:\n" + "\n".join(failures)


async def test_kubectl_and_openssl(setup: tuple[VnodeProcess, list[Identity], Path]) -> None:
    node, identities, _ = setup
    server = f"https://127.0.0.1:{node.port}"

    async def kubectl(*args: str) -> tuple[int, str, str]:
        return await run("kubectl", f"--server={server}", "--insecure-skip-tls-verify", *args)

    proxy_token = identities[4].curl[1].removeprefix("Authorization: Bearer ")
    log_token = identities[3].curl[1].removeprefix("Authorization: Bearer ")
    code, out, err = await kubectl(f"--token={proxy_token}", "get", "--raw", "/pods")
    assert code == 0 and json.loads(out)["kind"] == "PodList", err
    code, out, err = await kubectl(f"--token={log_token}", "get", "--raw", "/pods")
    assert code != 0 and "Forbidden" in err, err
    metrics_token = identities[5].curl[1].removeprefix("Authorization: Bearer ")
    code, out, err = await kubectl(f"--token={metrics_token}", "get", "--raw", "/metrics/resource")
    assert code == 0 and "container_cpu_usage_seconds_total" in out, err
    code, out, err = await kubectl(f"--token={metrics_token}", "get", "--raw", "/stats/summary")
    assert code != 0 and "Forbidden" in err, err  # nodes/metrics is not nodes/stats
    code, out, err = await kubectl("--token=forged", "get", "--raw", "/pods")
    assert code != 0 and "must be logged in" in err, err  # kubectl's words for a 401
    admin_cert, admin_key = node.admin_cert  # the operator's break-glass certificate
    code, out, err = await kubectl(
        f"--client-certificate={admin_cert}", f"--client-key={admin_key}", "get", "--raw", "/healthz"
    )
    assert code == 0 and out.strip() == "ok", err

    async def s_client(version: str) -> tuple[int, str]:
        code, out, err = await run(
            "openssl", "s_client", version, "-connect", f"127.0.0.1:{node.port}", "-brief"
        )
        return code, out + err

    code, text = await s_client("-tls1_2")
    assert code == 0 and "TLSv1.2" in text, text
    code, text = await s_client("-tls1_3")
    assert code == 0 and "TLSv1.3" in text, text
    code, text = await s_client("-tls1_1")
    assert code != 0, text
    for key in (node.root_dir / "pki").glob("*.key"):
        assert key.stat().st_mode & 0o777 == 0o600, key
