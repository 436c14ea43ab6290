"""vnode against a real Kubernetes control plane (``integration/kube``): joining under
NodeRestriction, the seed's flow with the scheduler and Deployments, service-account tokens the real
API server accepts, RBAC on the kubelet API, HA over three API servers, a cut link with the real node
lifecycle controller, and the plain-http mode through ``kubectl proxy``."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509

from integration.kube import KubeCluster
from integration.kube.view import ClusterView
from integration.node import VnodeProcess, free_port, running_node, wait_for
from tests.integration.test_join import JoiningNode, ca_pin

BUSYBOX = "docker.io/library/busybox:1.35"


def conditions(obj: dict[str, Any] | None) -> dict[str, str]:
    return {c["type"]: c["status"] for c in ((obj or {}).get("status") or {}).get("conditions") or []}


async def node_ready(cluster: ClusterView, name: str) -> dict[str, Any] | None:
    obj = await cluster.get_json("node", name)
    return obj if conditions(obj).get("Ready") == "True" else None


async def pods_by_label(cluster: ClusterView, selector: str) -> list[dict[str, Any]]:
    body = await cluster.get_json("pods", "-l", selector)
    return list((body or {}).get("items") or [])


async def all_ready(
    cluster: ClusterView, selector: str, count: int, node: str
) -> list[dict[str, Any]] | None:
    """The pods of ``selector`` once exactly ``count`` exist, none terminating, all Ready on ``node``."""
    pods = [p for p in await pods_by_label(cluster, selector) if not p["metadata"].get("deletionTimestamp")]
    if len(pods) != count:
        return None
    ok = all(p["spec"].get("nodeName") == node and conditions(p).get("Ready") == "True" for p in pods)
    return pods if ok else None


def container_ids(pods: list[dict[str, Any]]) -> dict[str, str]:
    return {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["containerID"] for p in pods}


def deployment(name: str, replicas: int, node: str, command: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {"name": "main", "image": BUSYBOX, "command": ["sh", "-c", command], **container}
                    ],
                },
            },
        },
    }


def sleeper(name: str, node: str, **spec: Any) -> dict[str, Any]:
    """A pod bound to ``node`` that sleeps (bound by nodeName: these tests are about the node)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            **spec,
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"]}],
        },
    }


async def running(cluster: ClusterView, name: str, *context: str) -> dict[str, Any] | None:
    """The pod when the API shows it Running (through the API server ``context`` names, if any)."""
    out = await cluster.kubectl(*context, "get", "pod", name, "-o", "json", check=False)
    pod = json.loads(out) if out else None
    return pod if (pod or {}).get("status", {}).get("phase") == "Running" else None


async def apply(cluster: ClusterView, *objects: dict[str, Any]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    await cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body).encode())


@pytest.fixture
async def edge(containerd: Any, cluster: ClusterView, tmp_path: Path) -> AsyncIterator[VnodeProcess]:
    async with running_node(
        tmp_path, containerd.endpoint, node_name="edge1", extra_args=cluster.node_args()
    ) as n:
        await wait_for(lambda: node_ready(cluster, "edge1"), timeout=60, what="edge1 Ready")
        yield n


async def test_join_registers_under_node_restriction_with_its_own_credential(
    containerd: Any, kube: KubeCluster, cluster: ClusterView, tmp_path: Path
) -> None:
    """``vnode join`` with the printed token and CA hash, given all three API servers: the Node is
    registered with the node's own ``system:node:<name>`` credential (so everything it writes
    passed NodeRestriction and the Node authorizer), turns Ready and renews its Lease."""
    pin = ca_pin(kube.ca_cert)
    assert pin == kube.ca_hash  # the harness prints what kubeadm's openssl recipe computes
    cluster.nodes.add("joined1")
    node = JoiningNode(
        tmp_path,
        containerd.endpoint,
        [",".join(kube.urls), "--token", kube.token, "--discovery-token-ca-cert-hash", pin],
        node_name="joined1",
    )
    await node.start()
    try:
        obj = await wait_for(lambda: node_ready(cluster, "joined1"), timeout=90, what="the node to be Ready")
        assert {"type": "InternalIP", "address": "127.0.0.1"} in obj["status"]["addresses"]
        wide = await cluster.kubectl("get", "nodes", "joined1", "-o", "wide")
        assert "Ready" in wide and "127.0.0.1" in wide and obj["status"]["nodeInfo"]["kubeletVersion"] in wide
        config = yaml.safe_load((node.root_dir / "kubelet.conf").read_text())
        assert [c["cluster"]["server"] for c in config["clusters"]] == kube.urls
        pem = (node.root_dir / "pki" / "kubelet-client-current.pem").read_bytes()
        subject = x509.load_pem_x509_certificate(pem).subject.rfc4514_string()
        assert "CN=system:node:joined1" in subject and "O=system:nodes" in subject
        first = await cluster.get_json("lease", "-n", "kube-node-lease", "joined1")
        assert first["spec"]["holderIdentity"] == "joined1"

        async def renewed() -> bool:
            lease = await cluster.get_json("lease", "-n", "kube-node-lease", "joined1")
            return bool(lease) and lease["spec"]["renewTime"] != first["spec"]["renewTime"]

        await wait_for(renewed, timeout=30, what="the Lease to be renewed")
        await apply(cluster, sleeper("hello", "joined1"))
        await wait_for(lambda: running(cluster, "hello"), timeout=60, what="a pod on the joined node to run")
        assert " W " not in "\n".join(
            line for line in node.log_tail(400).splitlines() if "forbidden" in line
        ), "the API server refused something the node wrote"
    finally:
        await node.terminate()


async def test_seed_flow_adopts_a_node_and_runs_deployments(
    containerd: Any, cluster: ClusterView, tmp_path: Path
) -> None:
    """The seed's flow: an admin creates the Node from a minimal JSON, vnode adopts it; the
    scheduler places a hostPort Deployment and a three-replica one on it; scaling and a rollout
    restart complete."""
    await cluster.kubectl(
        "create",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "seed1"}}).encode(),
    )
    created = await cluster.get_json("node", "seed1")
    args = cluster.node_args("seed1")
    async with running_node(tmp_path, containerd.endpoint, node_name="seed1", extra_args=args) as node:
        adopted = await wait_for(
            lambda: node_ready(cluster, "seed1"), timeout=60, what="seed1 adopted and Ready"
        )
        assert adopted["metadata"]["uid"] == created["metadata"]["uid"]  # the same object, no duplicate
        assert adopted["metadata"]["labels"]["kubernetes.io/hostname"] == "seed1"
        assert adopted["status"]["capacity"]["pods"] == "110"
        assert {"type": "InternalIP", "address": "127.0.0.1"} in adopted["status"]["addresses"]
        names = [n["metadata"]["name"] for n in (await cluster.get_json("nodes"))["items"]]
        assert names.count("seed1") == 1

        port = free_port()
        web = deployment(
            "web",
            1,
            "seed1",
            f"mkdir -p /www && echo seed-{port} > /www/index.html && exec httpd -f -p {port} -h /www",
            ports=[{"containerPort": port, "hostPort": port, "protocol": "TCP"}],
        )
        sleepers = deployment("sleepers", 3, "seed1", "trap 'exit 0' TERM; sleep 3600 & wait")
        await apply(cluster, web, sleepers)
        await wait_for(lambda: all_ready(cluster, "app=web", 1, "seed1"), timeout=120, what="web Ready")
        await wait_for(lambda: all_ready(cluster, "app=sleepers", 3, "seed1"), timeout=120, what="3 sleepers")

        async def page() -> bytes | None:
            try:
                async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/") as resp:
                    return await resp.read() if resp.status == 200 else None
            except aiohttp.ClientError:
                return None

        assert await wait_for(page, what="the hostPort on the node's IP") == f"seed-{port}\n".encode()
        wide = await cluster.kubectl("get", "pods", "-o", "wide")
        assert wide.count("seed1") == 4 and wide.count("Running") == 4, wide

        await cluster.kubectl("scale", "deployment/sleepers", "--replicas=5")
        await wait_for(lambda: all_ready(cluster, "app=sleepers", 5, "seed1"), timeout=120, what="5 sleepers")
        await cluster.kubectl("scale", "deployment/sleepers", "--replicas=1")
        await wait_for(lambda: all_ready(cluster, "app=sleepers", 1, "seed1"), timeout=120, what="1 sleeper")
        before = container_ids(await pods_by_label(cluster, "app=sleepers"))
        await cluster.kubectl("rollout", "restart", "deployment/sleepers")
        await cluster.kubectl("rollout", "status", "deployment/sleepers", "--timeout=120s", timeout=150)
        after = await wait_for(
            lambda: all_ready(cluster, "app=sleepers", 1, "seed1"), what="the restarted sleeper"
        )
        assert set(container_ids(after)) != set(before)  # a new pod replaced the old one
        assert node.proc is not None and node.proc.returncode is None


async def test_service_account_token_is_accepted_by_the_api_server(
    kube: KubeCluster, cluster: ClusterView, edge: VnodeProcess
) -> None:
    """The projected token vnode got through TokenRequest authenticates as the pod's service
    account at the real API server (a TokenReview says so)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tokened"},
        "spec": {
            "nodeName": "edge1",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": BUSYBOX,
                    "command": [
                        "sh",
                        "-c",
                        "cat /var/run/secrets/kubernetes.io/serviceaccount/token; echo; sleep 3600",
                    ],
                }
            ],
        },
    }
    await apply(cluster, pod)
    logs = await edge.log_containing("tokened", "main", b"\n", namespace=cluster.namespace)
    token = logs.decode().strip().splitlines()[0]
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    out = await cluster.kubectl("create", "-o", "json", "-f", "-", stdin=json.dumps(review).encode())
    status = json.loads(out)["status"]
    assert status["authenticated"] is True, status
    assert status["user"]["username"] == f"system:serviceaccount:{cluster.namespace}:default"
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["tokened"]


async def _kubelet_get(url: str, token: str | None) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers, ssl=ctx) as resp:
        return resp.status


async def test_kubelet_api_authorization_with_real_rbac(
    kube: KubeCluster, cluster: ClusterView, edge: VnodeProcess
) -> None:
    """A service account allowed only ``get nodes/log`` and ``get nodes/proxy`` reads logs and gets
    403 on exec; anonymous gets 401; the API server's own kubelet client (logs, exec) works."""
    await apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "talker"},
            "spec": {
                "nodeName": "edge1",
                "terminationGracePeriodSeconds": 1,
                "hostNetwork": True,
                "containers": [
                    {"name": "main", "image": BUSYBOX, "command": ["sh", "-c", "echo hi; sleep 3600"]}
                ],
            },
        },
    )
    await edge.log_containing("talker", "main", b"hi\n", namespace=cluster.namespace)
    role = f"{cluster.namespace}-logs"
    await apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "reader"},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": [{"apiGroups": [""], "resources": ["nodes/log", "nodes/proxy"], "verbs": ["get"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": cluster.namespace}],
        },
    )
    try:
        token = (await cluster.kubectl("create", "token", "reader")).strip()
        logs = f"{edge.url}/containerLogs/{cluster.namespace}/talker/main"
        exec_url = f"{edge.url}/exec/{cluster.namespace}/talker/main?command=true&output=1"
        assert await _kubelet_get(logs, token) == 200
        assert await _kubelet_get(exec_url, token) == 403
        assert await _kubelet_get(logs, None) == 401
        assert "hi" in await cluster.kubectl("logs", "talker")
        assert (
            await cluster.kubectl("exec", "talker", "--", "echo", "via-apiserver")
        ).strip() == "via-apiserver"
    finally:
        await cluster.kubectl("delete", "clusterrole,clusterrolebinding", role, check=False)


async def test_ha_survives_a_killed_then_a_frozen_api_server(
    kube: KubeCluster, cluster: ClusterView, edge: VnodeProcess
) -> None:
    """SIGKILL the API server the node uses, then SIGSTOP the next: the real node lifecycle
    controller never sees the node NotReady (no NodeNotReady event, no unreachable taint), pods keep
    their containers, and a pod created through the surviving server runs."""
    await apply(cluster, sleeper("steady", "edge1"))
    steady = await wait_for(lambda: running(cluster, "steady"), what="steady Running")
    (cid,) = container_ids([steady]).values()
    survivor = ["--context", "m2"]  # the admin's kubeconfig has a context per API server
    try:
        outage = datetime.now(UTC)
        kube.kill_master(0)
        kube.freeze_master(1)
        pod = sleeper("during", "edge1")
        await cluster.kubectl(*survivor, "apply", "-f", "-", stdin=json.dumps(pod).encode())
        await wait_for(
            lambda: running(cluster, "during", *survivor),
            timeout=150,
            what="the pod created through the surviving server",
        )

        async def renewed_past_grace() -> bool:
            """The Lease renewed through the survivor later than the node monitor grace period
            (40 s) after the outage began: the controller has had every chance to react."""
            out = await cluster.kubectl(
                *survivor, "get", "lease", "-n", "kube-node-lease", "edge1", "-o", "json"
            )
            renew = datetime.fromisoformat(json.loads(out)["spec"]["renewTime"].replace("Z", "+00:00"))
            return (renew - outage).total_seconds() > 50

        await wait_for(
            renewed_past_grace, timeout=120, interval=2, what="Lease renewals past the grace period"
        )
        node = json.loads(await cluster.kubectl(*survivor, "get", "node", "edge1", "-o", "json"))
        assert conditions(node)["Ready"] == "True"
        assert not [t for t in node["spec"].get("taints") or [] if "unreachable" in t["key"]]
        events = json.loads(
            await cluster.kubectl(
                *survivor, "get", "events", "-A", "--field-selector=involvedObject.name=edge1", "-o", "json"
            )
        )["items"]
        assert not [e for e in events if e["reason"] in ("NodeNotReady", "NodeStatusUnknown")], events
        now = json.loads(await cluster.kubectl(*survivor, "get", "pod", "steady", "-o", "json"))
        assert container_ids([now]) == {"steady": cid}
        assert "active master is now " + kube.urls[2] in edge.log_tail(400)
    finally:
        kube.thaw_master(1)
        await asyncio.to_thread(kube.restart_master, 0)


async def test_watches_follow_a_failover_from_a_hung_master(
    kube: KubeCluster, cluster: ClusterView, edge: VnodeProcess
) -> None:
    """SIGSTOP the master the node uses (it accepts connections and never answers): once the
    client has moved on, its pod watch must be on the new master at once, not after the watch's
    90 s idle deadline, so a pod created through a live master runs well within that."""
    live = ["--context", "m1"]
    try:
        kube.freeze_master(0)
        pod = sleeper("after-hang", "edge1")
        await cluster.kubectl(*live, "apply", "-f", "-", stdin=json.dumps(pod).encode())
        await wait_for(
            lambda: running(cluster, "after-hang", *live),
            timeout=60,  # the old way needed the failover (<= 20 s) plus the 90 s idle deadline
            what="the pod created through a live master during the hang",
        )
        assert "active master is now " in edge.log_tail(400)
    finally:
        kube.thaw_master(0)


async def test_cut_link_taints_evicts_what_does_not_tolerate_and_recovers(
    containerd: Any, kube: KubeCluster, cluster: ClusterView, tmp_path: Path
) -> None:
    """The API servers keep running, only one node's link is cut (a peer keeps its own): the node
    lifecycle controller marks it Unknown and taints it unreachable; a pod tolerating that
    indefinitely keeps running untouched; one with ``tolerationSeconds: 20`` is evicted, and vnode
    stops it when the link returns; the taint goes away."""
    relay = cluster.relay(0)
    args = cluster.node_args("cut1", servers=[relay.url])
    unreachable = "node.kubernetes.io/unreachable"

    def pod(name: str, seconds: int | None) -> dict[str, Any]:
        toleration: dict[str, Any] = {"key": unreachable, "operator": "Exists", "effect": "NoExecute"}
        if seconds is not None:
            toleration["tolerationSeconds"] = seconds
        return sleeper(name, "cut1", tolerations=[toleration])

    # A peer keeps its link: with every node of a zone unreachable the controller assumes its own
    # connectivity is at fault and evicts nothing (its "full disruption" mode).
    peer = running_node(
        tmp_path / "peer", containerd.endpoint, node_name="peer1", extra_args=cluster.node_args("peer1")
    )
    async with peer, running_node(tmp_path, containerd.endpoint, node_name="cut1", extra_args=args) as node:
        await wait_for(lambda: node_ready(cluster, "cut1"), timeout=60, what="cut1 Ready")
        await wait_for(lambda: node_ready(cluster, "peer1"), timeout=60, what="peer1 Ready")
        await apply(cluster, pod("stays", None), pod("evicted", 20))

        async def both_running() -> list[dict[str, Any]] | None:
            pods = [await cluster.get_json("pod", n) for n in ("stays", "evicted")]
            ok = all((p or {}).get("status", {}).get("phase") == "Running" for p in pods)
            return [p for p in pods if p] if ok else None

        before = container_ids(await wait_for(both_running, what="both pods Running"))
        relay.cut()

        async def tainted() -> bool:
            obj = await cluster.get_json("node", "cut1")
            taints = {t["key"] for t in (obj or {}).get("spec", {}).get("taints") or []}
            return conditions(obj).get("Ready") == "Unknown" and unreachable in taints

        await wait_for(tainted, timeout=120, what="the node Unknown and tainted unreachable")

        async def evicted_marked() -> bool:
            obj = await cluster.get_json("pod", "evicted")
            return obj is None or bool(obj["metadata"].get("deletionTimestamp"))

        await wait_for(evicted_marked, timeout=90, what="the control plane to evict the intolerant pod")
        assert "evicted" in await node.pods()  # offline, the node keeps running it until it hears
        relay.restore()

        async def evicted_gone() -> bool:
            return "evicted" not in await node.pods() and await cluster.get_json("pod", "evicted") is None

        await wait_for(evicted_gone, timeout=90, what="vnode to stop the evicted pod and finish its deletion")

        async def untainted() -> bool:
            obj = await cluster.get_json("node", "cut1")
            taints = {t["key"] for t in (obj or {}).get("spec", {}).get("taints") or []}
            return conditions(obj).get("Ready") == "True" and unreachable not in taints

        await wait_for(untainted, timeout=90, what="the node Ready and the taint gone")
        stays = await cluster.get_json("pod", "stays")
        assert container_ids([stays]) == {"stays": before["stays"]}
        assert stays["status"]["containerStatuses"][0]["restartCount"] == 0


async def test_plain_http_through_kubectl_proxy(
    containerd: Any, kube: KubeCluster, cluster: ClusterView, tmp_path: Path
) -> None:
    """The seed's insecure mode: ``kubectl proxy`` stands in for the port kube-apiserver no longer
    has; ``vnode run --master http://127.0.0.1:P`` registers and runs a pod."""
    port = free_port()
    proxy = await asyncio.create_subprocess_exec(
        *kube.kubectl_argv("proxy", f"--port={port}", "--address=127.0.0.1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proxy.stdout is not None
        assert b"Starting to serve" in await asyncio.wait_for(proxy.stdout.readline(), 30)
        cluster.nodes.add("plain1")
        args = ["--master", f"http://127.0.0.1:{port}"]
        async with running_node(tmp_path, containerd.endpoint, node_name="plain1", extra_args=args):
            await wait_for(lambda: node_ready(cluster, "plain1"), timeout=60, what="plain1 Ready")
            await apply(cluster, sleeper("plain", "plain1"))
            await wait_for(
                lambda: running(cluster, "plain"), timeout=60, what="the pod through kubectl proxy"
            )
    finally:
        proxy.kill()
        await proxy.wait()


async def test_a_deployment_rolls_out_as_its_pods_turn_ready(
    cluster: ClusterView, edge: VnodeProcess
) -> None:
    """Readiness decides the rollout: while the probe fails, ``kubectl get pods`` shows READY 0/1
    and ``rollout status`` says it waits; once the pods turn Ready it completes."""
    probe = {"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1}
    await apply(cluster, deployment("gated", 2, "edge1", "sleep 3600", readinessProbe=probe))

    async def unready_running() -> list[dict[str, Any]] | None:
        pods = await pods_by_label(cluster, "app=gated")
        ok = len(pods) == 2 and all(p.get("status", {}).get("phase") == "Running" for p in pods)
        return pods if ok and not any(conditions(p).get("Ready") == "True" for p in pods) else None

    pods = await wait_for(unready_running, timeout=120, what="two Running, unready pods")
    table = await cluster.kubectl("get", "pods", "-l", "app=gated", "--no-headers")
    assert [line.split()[1] for line in table.splitlines()] == ["0/1", "0/1"], table
    status = await cluster.kubectl("rollout", "status", "deployment/gated", "--watch=false")
    assert "0 of 2 updated replicas are available" in status, status

    for pod in pods:
        await cluster.kubectl("exec", pod["metadata"]["name"], "--", "touch", "/tmp/ready")
    out = await cluster.kubectl("rollout", "status", "deployment/gated", "--timeout=120s", timeout=150)
    assert 'deployment "gated" successfully rolled out' in out
    table = await cluster.kubectl("get", "pods", "-l", "app=gated", "--no-headers")
    assert [line.split()[1] for line in table.splitlines()] == ["1/1", "1/1"], table


async def test_kubectl_explain_through_a_joined_nodes_local_api_shows_the_real_schema(
    cluster: ClusterView, edge: VnodeProcess
) -> None:
    """A joined node keeps the control plane's OpenAPI document of core/v1 (once per start), so
    ``kubectl explain`` through its local API shows the real schema, as the API server would (the
    local API reads the kept copy only, never the control plane, so this holds offline too)."""
    argv = cluster.kubectl_argv("explain", "pod.spec.restartPolicy")
    kubectl = argv[0]
    real = await cluster.kubectl("explain", "pod.spec.restartPolicy")

    async def local_explain() -> str | None:
        proc = await asyncio.create_subprocess_exec(
            kubectl, "--kubeconfig", str(edge.root_dir / "local.kubeconfig"),
            "explain", "pod.spec.restartPolicy",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return out.decode() if proc.returncode == 0 else None

    answered = await wait_for(local_explain, timeout=60, what="explain through the local API")
    assert answered == real
