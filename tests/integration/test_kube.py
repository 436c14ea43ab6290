"""vnode against a real Kubernetes control plane (``integration/kube``): the acceptance checks of
joining, scheduling and the seed's flows, with the real admission, authorizers and controllers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from integration.kube import KubeCluster
from integration.kube.view import ClusterView
from integration.node import wait_for
from tests.integration.test_join import JoiningNode, ca_pin


async def node_ready(cluster: ClusterView, name: str) -> dict[str, Any] | None:
    obj = await cluster.get_json("node", name)
    conditions = {c["type"]: c["status"] for c in ((obj or {}).get("status") or {}).get("conditions") or []}
    return obj if conditions.get("Ready") == "True" else None


async def test_join_registers_under_node_restriction_with_its_own_credential(
    containerd: Any, kube: KubeCluster, cluster: ClusterView, tmp_path: Path
) -> None:
    pin = ca_pin(kube.ca_cert)
    assert pin == kube.ca_hash
    cluster.nodes.add("joined1")
    node = JoiningNode(
        tmp_path, containerd.endpoint,
        [",".join(kube.urls), "--token", kube.token, "--discovery-token-ca-cert-hash", pin],
        node_name="joined1",
    )  # fmt: skip
    await node.start()
    try:
        obj = await wait_for(lambda: node_ready(cluster, "joined1"), timeout=90, what="the node to be Ready")
        assert {"type": "InternalIP", "address": "127.0.0.1"} in obj["status"]["addresses"]
        wide = await cluster.kubectl("get", "nodes", "joined1", "-o", "wide")
        print(wide)
        assert "Ready" in wide and "127.0.0.1" in wide
        config = yaml.safe_load((node.root_dir / "kubelet.conf").read_text())
        assert [c["cluster"]["server"] for c in config["clusters"]] == kube.urls
    finally:
        print(node.log_tail(80))
        await node.terminate()
