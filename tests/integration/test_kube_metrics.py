"""Stats and metrics with the real control plane: ``kubectl top`` through a real metrics-server
(v0.8.0, verifying the node's serving certificate), the Node's allocatable with reserved
resources and its pressure conditions, and ``/metrics`` of a joined node.

The API server's node proxy (``/api/v1/nodes/<node>/proxy/...``) refuses a loopback node address
("address not allowed"), so the node of that test says it is at the host's own address."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.kube import KubeCluster
from integration.kube.metrics import MetricsServer, host_address
from integration.kube.view import ClusterView
from integration.node import VnodeProcess, running_node, wait_for
from tests.integration.test_kube import apply, conditions, node_ready
from tests.metrics_server_rules import decode

BUSYBOX = "docker.io/library/busybox:1.35"
NODE = "top1"


@pytest.fixture
async def metrics_server(kube: KubeCluster, tmp_path: Path) -> AsyncIterator[MetricsServer]:
    server = MetricsServer(kube, tmp_path / "metrics-server")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def top_node(containerd: Any, cluster: ClusterView, tmp_path: Path) -> AsyncIterator[VnodeProcess]:
    args = [
        *cluster.node_args(NODE),
        "--kube-reserved=cpu=250m,memory=256Mi",
        "--system-reserved=memory=128Mi",
    ]
    async with running_node(tmp_path / "node", containerd.endpoint, node_name=NODE, extra_args=args) as n:
        await wait_for(lambda: node_ready(cluster, NODE), timeout=60, what=f"{NODE} Ready")
        yield n


def burner(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "burn", "image": BUSYBOX, "command": ["sh", "-c", "while :; do :; done"]}
            ],
        },
    }


async def test_kubectl_top_node_and_pod_through_metrics_server(
    metrics_server: MetricsServer, top_node: VnodeProcess, cluster: ClusterView
) -> None:
    await apply(cluster, burner("burner"))

    async def running() -> bool:
        pod = await cluster.get_json("pod", "burner")
        return conditions(pod).get("Ready") == "True"

    await wait_for(running, timeout=90, what="burner Ready")

    async def top(*args: str) -> str | None:
        code, out, _ = await cluster.kubectl_status("top", *args)
        return out if code == 0 else None

    async def burning() -> str | None:
        """``kubectl top pod burner`` once it shows the spinning loop (a window of two scrapes 15 s
        apart; on a loaded shared machine the loop may get less than a core, so a quarter will do)."""
        out = await top("pod", "burner")
        match = re.search(r"^burner\s+(\d+)m\s+(\d+)Mi", out or "", re.MULTILINE)
        return out if match and int(match.group(1)) >= 250 else None

    try:
        nodes = await wait_for(lambda: top("node", NODE), timeout=120, interval=2, what="kubectl top node")
        pods = await wait_for(burning, timeout=180, interval=2, what="kubectl top pod showing the burner")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nmetrics-server log:\n{metrics_server.log_tail()}") from None
    row = nodes.splitlines()[1].split()
    assert row[0] == NODE and row[1].endswith("m") and row[3].endswith("Mi"), nodes
    assert int(row[1].removesuffix("m")) > 0 and int(row[3].removesuffix("Mi")) > 0, nodes
    assert pods.splitlines()[1].split()[0] == "burner", pods


async def test_allocatable_pressure_conditions_and_cluster_metrics(
    top_node: VnodeProcess, cluster: ClusterView
) -> None:
    code, body = await top_node.get("/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["vnode_link_online"].samples[0].value == 1
    codes = {s.labels["code"] for s in families["rest_client_requests"].samples if s.value > 0}
    assert "200" in codes or "201" in codes, codes
    code, body = await top_node.get("/metrics/resource")
    decoded = decode(body.decode())
    assert decoded.node is not None and not decoded.problems, decoded.problems

    node = await cluster.get_json("node", NODE)
    capacity, allocatable = node["status"]["capacity"], node["status"]["allocatable"]
    mem = int(capacity["memory"].removesuffix("Ki")) * 1024
    # memory: kube-reserved 256Mi + system-reserved 128Mi + the hard threshold memory.available<100Mi
    assert int(allocatable["memory"].removesuffix("Ki")) * 1024 == mem - (256 + 128 + 100) * 2**20
    cpus = int(capacity["cpu"])
    assert allocatable["cpu"] == f"{cpus * 1000 - 250}m"
    disk = int(capacity["ephemeral-storage"].removesuffix("Ki")) * 1024
    allocatable_disk = int(allocatable["ephemeral-storage"].removesuffix("Ki")) * 1024
    assert abs(allocatable_disk - int(disk * 0.9)) <= 1024  # nodefs.available<10%
    assert conditions(node)["MemoryPressure"] == "False" and conditions(node)["DiskPressure"] == "False"
    reasons = {c["type"]: c["reason"] for c in node["status"]["conditions"]}
    assert reasons["MemoryPressure"] == "KubeletHasSufficientMemory"
    assert reasons["PIDPressure"] == "KubeletHasSufficientPID"


async def test_stats_through_the_api_server_node_proxy(
    containerd: Any, cluster: ClusterView, tmp_path: Path
) -> None:
    """``kubectl get --raw /api/v1/nodes/<node>/proxy/...``: the API server refuses a loopback node
    address, so this node says it is at the host's own address (with a serving certificate for it)."""
    name, address = "proxied1", host_address()
    cluster.kube.pki.node(name, ip=address)  # issued first: node_args reuses the node's files
    args = [*cluster.node_args(name), f"--node-ip={address}"]
    async with running_node(tmp_path, containerd.endpoint, node_name=name, extra_args=args):
        await wait_for(lambda: node_ready(cluster, name), timeout=60, what=f"{name} Ready")
        base = f"/api/v1/nodes/{name}/proxy"
        summary = json.loads(await cluster.kubectl("get", "--raw", f"{base}/stats/summary"))
        assert summary["node"]["nodeName"] == name and summary["node"]["memory"]["workingSetBytes"] > 0
        small = json.loads(
            await cluster.kubectl("get", "--raw", f"{base}/stats/summary?only_cpu_and_memory=true")
        )
        assert set(small["node"]) == {"nodeName", "systemContainers", "startTime", "cpu", "memory"}
        decoded = decode(await cluster.kubectl("get", "--raw", f"{base}/metrics/resource"))
        assert decoded.node is not None and not decoded.problems, decoded.problems
        text = await cluster.kubectl("get", "--raw", f"{base}/metrics")
        assert "kubelet_running_pods" in {f.name for f in text_string_to_metric_families(text)}
