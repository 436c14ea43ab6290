"""vnode's API client and Lease against the real kube-apiserver, with a node's own credential:
one HTTP/2 connection for everything, protobuf answers that are not read, and a Lease renewed by
the smallest write that NodeRestriction and the Node authorizer accept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from integration.kube import KubeCluster
from integration.kube.view import ClusterView
from vnode import errors
from vnode.clients.kubeconfig import load_access
from vnode.clients.masters import Masters
from vnode.controllers.lease import LEASE_NAMESPACE, NodeLease

LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"


@pytest.fixture
async def node_client(kube: KubeCluster, cluster: ClusterView) -> AsyncIterator[tuple[Masters, Any, str]]:
    """A registered Node and a client with its credential, through a relay that counts connections."""
    name = f"client-{cluster.namespace[-4:]}"
    cluster.nodes.add(name)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    await kube.kubectl("create", "-f", "-", stdin=json.dumps(node).encode())
    relay = cluster.relay()
    masters = Masters(load_access(kube.node_kubeconfig(name, [relay.url]), None))
    try:
        yield masters, relay, name
    finally:
        await masters.close()
        await kube.kubectl("delete", "lease", "-n", LEASE_NAMESPACE, name, "--ignore-not-found", check=False)


async def test_requests_and_watches_share_one_http2_connection(node_client: tuple[Masters, Any, str]) -> None:
    """Three watches open and requests made beside them: one connection to the API server (over
    HTTP/1.1 each open watch holds a connection of its own)."""
    masters, relay, name = node_client
    node = await masters.request("GET", f"/api/v1/nodes/{name}")
    rv = node["metadata"]["resourceVersion"]
    selector = {"fieldSelector": f"spec.nodeName={name}", "resourceVersion": rv}
    paths = [
        ("/api/v1/pods", selector),
        ("/api/v1/nodes", {"fieldSelector": f"metadata.name={name}", "resourceVersion": rv}),
        ("/api/v1/pods", selector),
    ]
    modified = asyncio.Event()

    async def follow(path: str, params: dict[str, str]) -> None:
        async for event in masters.watch(path, params):
            if event["type"] == "MODIFIED" and event["object"]["metadata"]["name"] == name:
                modified.set()

    watches = [asyncio.create_task(follow(p, q)) for p, q in paths]
    try:
        await masters.request(
            "PATCH",
            f"/api/v1/nodes/{name}",
            body={"metadata": {"labels": {"client-test": "1"}}},
            content_type="application/merge-patch+json",
        )
        await asyncio.wait_for(modified.wait(), timeout=30)  # the node watch saw the label change
        assert all(not w.done() for w in watches), "a watch ended"
        assert relay.relayed == 1
    finally:
        for w in watches:
            w.cancel()
        await asyncio.gather(*watches, return_exceptions=True)


async def test_an_unread_answer_is_asked_in_protobuf_and_its_failure_still_explains_itself(
    node_client: tuple[Masters, Any, str],
) -> None:
    """A write with ``answer=False`` returns nothing; when it fails, the API server's Status comes
    in protobuf and its message is the error's (not the bytes of the encoding)."""
    masters, _, name = node_client
    with pytest.raises(errors.NotFound) as missing:
        await masters.request(
            "PATCH",
            f"{LEASES}/{name}",
            body={"spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}},
            content_type="application/merge-patch+json",
            answer=False,
        )
    assert f'leases.coordination.k8s.io "{name}" not found' in str(missing.value)
    with pytest.raises(errors.Unavailable) as refused:  # the Node authorizer: not this node's Lease
        await masters.request(
            "PATCH",
            f"{LEASES}/someone-else",
            body={"spec": {"renewTime": "2026-01-01T00:00:00.000000Z"}},
            content_type="application/merge-patch+json",
            answer=False,
        )
    assert "forbidden" in str(refused.value) and "k8s\x00" not in str(refused.value)


async def test_lease_is_created_renewed_by_patch_and_recreated(
    kube: KubeCluster, node_client: tuple[Masters, Any, str]
) -> None:
    """The first renewal creates the Lease (owned by the Node), the next ones patch renewTime
    only, and a deleted Lease is made again."""
    masters, _, name = node_client
    node = await masters.request("GET", f"/api/v1/nodes/{name}")
    lease = NodeLease(masters, name, lambda: str(node["metadata"]["uid"]))
    await lease.renew()
    first = await masters.request("GET", f"{LEASES}/{name}")
    assert first["spec"]["holderIdentity"] == name
    assert first["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    await lease.renew()
    second = await masters.request("GET", f"{LEASES}/{name}")
    assert second["spec"]["renewTime"] > first["spec"]["renewTime"]
    assert second["spec"]["holderIdentity"] == name and second["spec"]["leaseDurationSeconds"] == 40
    managers = {(f["manager"], f["operation"]) for f in second["metadata"]["managedFields"]}
    assert ("vnode", "Update") in managers  # the renewal was vnode's own write, through the API
    await kube.kubectl("delete", "lease", "-n", LEASE_NAMESPACE, name)
    await lease.renew()
    again = await masters.request("GET", f"{LEASES}/{name}")
    assert again["metadata"]["uid"] != first["metadata"]["uid"] and again["spec"]["holderIdentity"] == name
