"""The read-only local API with the real kubectl, on a standalone ``vnode run`` and real containerd.

kubectl reads the kubeconfig vnode writes (``<root-dir>/local.kubeconfig``): its CA is the node's
self-signed serving certificate and its token the one in ``local.token``, so every command here
also proves TLS verification and authentication work end to end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from integration.controlplane import ensure_kubectl
from integration.node import VnodeProcess, busybox_pod, is_running, running_node, wait_for


@pytest.fixture
async def node(containerd: Any, tmp_path: Path) -> AsyncIterator[VnodeProcess]:
    await asyncio.to_thread(ensure_kubectl)
    async with running_node(tmp_path, containerd.endpoint) as proc:
        await wait_for(lambda: _exists(kubeconfig_path(proc)), timeout=30, what="local.kubeconfig")
        yield proc


async def _exists(path: Path) -> bool:
    return path.exists()


def kubeconfig_path(node: VnodeProcess) -> Path:
    return node.root_dir / "local.kubeconfig"


async def kubectl(node: VnodeProcess, *args: str, check: bool = True) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig_path(node)), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"kubectl {' '.join(args)} did not finish within 60s") from None
    code = proc.returncode or 0
    if check and code != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({code}): {err.decode()}\n{node.log_tail()}")
    return code, out.decode(), err.decode()


def client(node: VnodeProcess, *, token: str | None = "from-kubeconfig") -> tuple[aiohttp.ClientSession, str]:
    """An HTTPS session that trusts the kubeconfig's CA, with its token (or ``token``) and URL."""
    config = yaml.safe_load(kubeconfig_path(node).read_text())
    cluster = config["clusters"][0]["cluster"]
    ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    if token == "from-kubeconfig":
        token = config["users"][0]["user"]["token"]
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), headers=headers)
    return session, cluster["server"]


def rows(output: str, key: int = 0) -> dict[str, list[str]]:
    """kubectl's table output keyed by column ``key`` (the header row under ``NAME``)."""
    return {line.split()[key]: line.split() for line in output.splitlines() if line.strip()}


async def start_pod(node: VnodeProcess, name: str, command: str) -> str:
    pod = busybox_pod(name, command)
    pod["metadata"]["labels"] = {"app": name}
    node.write_manifest(f"{name}.yaml", pod)
    await node.wait_pod(name, lambda p: is_running(p, "main"), what=f"{name} running")
    return node.static_name(name)


async def test_kubectl_get_pods_pod_json_and_nodes(node: VnodeProcess) -> None:
    name = await start_pod(node, "hello", "echo hello; sleep 3600")

    _, out, _ = await kubectl(node, "get", "pods")
    table = rows(out)
    assert table["NAME"] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert table[name][1:4] == ["1/1", "Running", "0"], out

    _, out, _ = await kubectl(node, "get", "pods", "-A", "-o", "wide")
    assert rows(out, 1)[name][:4] == ["default", name, "1/1", "Running"]
    assert rows(out, 1)[name][6:8] == ["127.0.0.1", node.node_name], out

    _, out, _ = await kubectl(node, "get", "pods", "-l", "app=hello", "--field-selector=status.phase=Running")
    assert name in rows(out)
    _, out, err = await kubectl(node, "get", "pods", "-l", "app=other")
    assert name not in out and "No resources found" in err
    _, out, err = await kubectl(node, "get", "pods", "--field-selector=status.phase=Pending")
    assert name not in out

    _, out, _ = await kubectl(node, "get", "pod", name, "-o", "json")
    pod = json.loads(out)
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == name
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["ready"] is True
    assert int(pod["metadata"]["resourceVersion"]) > 0

    code, _, err = await kubectl(node, "get", "pod", "nope", check=False)
    assert code != 0 and 'pods "nope" not found' in err

    _, out, _ = await kubectl(node, "get", "nodes")
    assert rows(out)["NAME"] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert rows(out)[node.node_name][1:3] == ["Ready", "edge"], out
    _, out, _ = await kubectl(node, "get", "node", node.node_name, "-o", "json")
    assert json.loads(out)["metadata"]["labels"]["kubernetes.io/hostname"] == node.node_name

    _, out, err = await kubectl(node, "get", "configmaps,secrets,services")
    assert "No resources found" in err

    assert kubeconfig_path(node).stat().st_mode & 0o777 == 0o600
    assert (node.root_dir / "local.token").stat().st_mode & 0o777 == 0o600


async def test_kubectl_logs_and_follow(node: VnodeProcess) -> None:
    name = await start_pod(node, "ticker", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.3; done")
    await node.log_containing(name, "main", b"tick-2\n")

    _, out, _ = await kubectl(node, "logs", name)
    assert out.startswith("tick-0\ntick-1\ntick-2\n"), out
    _, out, _ = await kubectl(node, "logs", name, "-c", "main", "--tail=1", "--timestamps")
    assert len(out.splitlines()) == 1 and " tick-" in out

    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig_path(node)), "logs", "-f", "--tail=1", name,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            first = int((await proc.stdout.readline()).decode().strip().removeprefix("tick-"))
            later = int((await proc.stdout.readline()).decode().strip().removeprefix("tick-"))
        assert later == first + 1  # a line written after the command started, streamed to it
        # Stopping the node ends the open stream at once, and kubectl with it.
        assert await asyncio.wait_for(node.terminate(), 15) == 0
        await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_watch_sees_the_static_pod_deleted(node: VnodeProcess) -> None:
    name = await start_pod(node, "doomed", "sleep 3600")
    session, server = client(node)
    async with session:
        async with session.get(f"{server}/api/v1/namespaces/default/pods") as resp:
            listed = await resp.json()
        start = int(listed["metadata"]["resourceVersion"])
        assert name in [p["metadata"]["name"] for p in listed["items"]]

        async with session.get(
            f"{server}/api/v1/pods", params={"watch": "true", "resourceVersion": str(start + 1000)}
        ) as resp:
            expired = json.loads(await resp.content.readline())
        assert expired["type"] == "ERROR" and expired["object"]["code"] == 410
        assert expired["object"]["reason"] == "Expired"

        params = {"watch": "true", "resourceVersion": str(start), "fieldSelector": f"metadata.name={name}"}
        events: list[dict[str, Any]] = []
        async with session.get(f"{server}/api/v1/namespaces/default/pods", params=params) as resp:
            assert resp.status == 200
            (node.manifests / "doomed.yaml").unlink()
            async with asyncio.timeout(60):
                while not events or events[-1]["type"] != "DELETED":
                    events.append(json.loads(await resp.content.readline()))
    assert {e["object"]["metadata"]["name"] for e in events} == {name}
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > start
    assert await node.pod(name) is None


async def test_kubectl_get_pods_watch_prints_the_deletion(node: VnodeProcess) -> None:
    name = await start_pod(node, "watched", "sleep 3600")
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig_path(node)), "get", "pods", "-w", "--output-watch-events",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[list[str]] = []
    try:
        async with asyncio.timeout(60):
            while not any(r[:2] == ["ADDED", name] for r in seen):
                seen.append((await proc.stdout.readline()).decode().split())
            (node.manifests / "watched.yaml").unlink()
            while not any(r[:2] == ["DELETED", name] for r in seen):
                seen.append((await proc.stdout.readline()).decode().split())
    finally:
        proc.kill()
        await proc.wait()
    assert seen[0][:3] == ["EVENT", "NAME", "READY"], seen


async def test_token_required_and_writes_refused(node: VnodeProcess) -> None:
    name = await start_pod(node, "kept", "sleep 3600")

    for token in (None, "wrong"):
        session, server = client(node, token=token)
        async with session, session.get(f"{server}/api/v1/pods") as resp:
            body = await resp.json()
        assert resp.status == 401 and body["kind"] == "Status" and body["reason"] == "Unauthorized"

    code, out, err = await kubectl(node, "delete", "pod", name, "--wait=false", check=False)
    assert code != 0 and "read-only" in err, (out, err)

    session, server = client(node)
    async with session:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "new"}}
        async with session.post(f"{server}/api/v1/namespaces/default/pods", json=pod) as resp:
            body = await resp.json()
        assert resp.status == 405 and body["reason"] == "MethodNotAllowed" and "read-only" in body["message"]
        async with session.delete(f"{server}/api/v1/namespaces/default/pods/{name}") as resp:
            assert resp.status == 405
        async with session.get(f"{server}/apis/apps/v1/deployments") as resp:
            body = await resp.json()
        assert resp.status == 404 and body["kind"] == "Status" and body["code"] == 404

    _, out, _ = await kubectl(node, "get", "pod", name)
    assert rows(out)[name][1:3] == ["1/1", "Running"]
    kept = await node.pod(name)
    assert kept is not None and is_running(kept, "main")


async def test_kubectl_describe_and_get_events_through_the_local_api(node: VnodeProcess) -> None:
    """The node's own Events, served as the API server would: ``describe pod`` shows why a pod
    does not run (the pull error), also after vnode restarts; ``get events`` prints kubectl's
    table; ``get events -w`` streams a new one."""
    bad = busybox_pod("nopull", "true", container={"image": "registry.invalid/nothing/here:1.0"})
    node.write_manifest("nopull.yaml", bad)
    name = node.static_name("nopull")

    async def described() -> str | None:
        code, out, _ = await kubectl(node, "describe", "pod", name, check=False)
        return out if code == 0 and "Failed to pull image" in out else None

    out = await wait_for(described, timeout=60, what="describe to show the pull failure")
    assert "Warning" in out and "registry.invalid/nothing/here:1.0" in out

    _, table, _ = await kubectl(node, "get", "events")
    assert table.splitlines()[0].split()[:5] == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT"], table
    assert f"pod/{name}" in table

    await node.terminate()
    await node.start()
    await wait_for(lambda: _exists(kubeconfig_path(node)), timeout=30, what="local.kubeconfig")
    out = await wait_for(described, timeout=60, what="the Events after a restart")

    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig_path(node)), "get", "events", "-w", "--output-watch-events",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        await start_pod(node, "fresh", "sleep 3600")
        fresh = node.static_name("fresh")
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "the watch ended"
            if f"pod/{fresh}" in line and "Started" in line:
                break
    finally:
        proc.kill()
        await proc.wait()


async def test_kubectl_apply_and_explain_against_the_local_api(node: VnodeProcess) -> None:
    """kubectl's own checks pass (OpenAPI v3 served), so ``apply`` reaches vnode and gets its 405
    with the reason, with no ``--validate=false``; ``explain`` answers from the served schema."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "applied"},
           "spec": {"containers": [{"name": "main", "image": "busybox"}]}}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig_path(node)), "apply", "-f", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(pod).encode()), 60)
    assert proc.returncode != 0
    assert "the local API of this node is read-only" in err.decode(), (out, err)
    assert "openapi" not in err.decode().lower(), err

    _, explained, _ = await kubectl(node, "explain", "pod")
    assert "KIND:" in explained and "Pod" in explained and "spec" in explained, explained
