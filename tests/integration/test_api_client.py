"""vnode's API client and Lease against the real kube-apiserver, with a node's own credential:
protobuf answers that are not read, and a Lease renewed by the smallest write that
NodeRestriction and the Node authorizer accept."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from integration.kube import KubeCluster
from integration.kube.view import ClusterView
from vnode import errors
from vnode.clients.kubeconfig import load_access
from vnode.clients.masters import Masters
from vnode.controllers.lease import LEASE_NAMESPACE, NodeLease

LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"


@pytest.fixture
async def node_client(kube: KubeCluster, cluster: ClusterView) -> AsyncIterator[tuple[Masters, str]]:
    """A registered Node and a client with its credential."""
    name = f"client-{cluster.namespace[-4:]}"
    cluster.nodes.add(name)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    await kube.kubectl("create", "-f", "-", stdin=json.dumps(node).encode())
    masters = Masters(load_access(kube.node_kubeconfig(name), None))
    try:
        yield masters, name
    finally:
        await masters.close()
        await kube.kubectl("delete", "lease", "-n", LEASE_NAMESPACE, name, "--ignore-not-found", check=False)


async def test_an_unread_answer_is_asked_in_protobuf_and_its_failure_still_explains_itself(
    node_client: tuple[Masters, str],
) -> None:
    """A write with ``answer=False`` returns nothing; when it fails, the API server's Status comes
    in protobuf and its message is the error's (not the bytes of the encoding)."""
    masters, name = node_client
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
    kube: KubeCluster, node_client: tuple[Masters, str]
) -> None:
    """The first renewal creates the Lease (owned by the Node), the next ones patch renewTime
    only, and a deleted Lease is made again."""
    masters, name = node_client
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
