"""``vnode status`` of a node that ran pods on a real containerd: beside the running node (its
/healthz asked, the runtime asked), and after it stopped (the same pods, from the store alone)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from integration.containerd import Containerd
from integration.node import busybox_pod, free_port, is_running, running_node, wait_for

BAD_IMAGE = "registry.invalid/nothing/here:1.0"
PHASES = {"Pending": 1, "Running": 2, "Succeeded": 1}


async def vnode_status(root_dir: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vnode", "status", f"--root-dir={root_dir}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, (out + err).decode()
    return out.decode()


def pull_failure(facts: dict[str, Any], pod: str) -> dict[str, Any] | None:
    for warning in facts["warnings"]:
        if warning["name"] == pod and warning["reason"] == "Failed":
            return dict(warning)
    return None


async def test_status_counts_pods_by_phase_and_shows_the_pull_failure(
    containerd: Containerd, tmp_path: Path
) -> None:
    healthz_port = free_port()
    async with running_node(
        tmp_path, containerd.endpoint, extra_args=[f"--healthz-port={healthz_port}"]
    ) as node:
        for name in ("web", "worker"):
            node.write_manifest(f"{name}.yaml", busybox_pod(name, "sleep 3600"))
        node.write_manifest("once.yaml", busybox_pod("once", "true", restartPolicy="Never"))
        node.write_manifest("bad.yaml", busybox_pod("bad", "true", container={"image": BAD_IMAGE}))
        for name in ("web", "worker"):
            await node.wait_pod(name, lambda p: is_running(p, "main"), what=f"{name} running")
        await node.wait_pod("once", lambda p: p["status"]["phase"] == "Succeeded", what="once succeeded")
        bad = node.static_name("bad")

        async def settled() -> dict[str, Any] | None:  # the store is written as the pods change
            facts = json.loads(await vnode_status(node.root_dir, "--output", "json"))
            return facts if facts["pods"]["byPhase"] == PHASES and pull_failure(facts, bad) else None

        facts = await wait_for(settled, what="vnode status to count the pods and show the pull failure")
        assert node.proc is not None
        assert facts["node"] == node.node_name and facts["link"]["state"] == "standalone"
        assert facts["vnode"]["running"] is True and facts["vnode"]["pid"] == node.proc.pid
        assert facts["vnode"]["healthz"] == {
            "url": f"http://127.0.0.1:{healthz_port}/healthz",
            "ok": True,
            "answer": "ok",
        }
        runtime = facts["runtime"]
        assert runtime["endpoint"] == containerd.endpoint and runtime["answers"] is True
        assert runtime["version"].startswith("containerd://")
        assert facts["pods"]["total"] == 4 and facts["pods"]["syncFailing"] == []
        reasons = {p["name"]: p["reason"] for p in facts["pods"]["items"]}
        assert reasons.pop(bad) in ("ErrImagePull", "ImagePullBackOff")
        assert set(reasons.values()) == {None}
        failure = pull_failure(facts, bad)
        assert failure is not None and failure["namespace"] == "default" and failure["kind"] == "Pod"
        assert failure["message"].startswith(f'Failed to pull image "{BAD_IMAGE}": ')

        text = await vnode_status(node.root_dir)
        assert text.startswith(f"node {node.node_name}: vnode 0.1.0 running (pid {node.proc.pid}, since ")
        assert "pods: 4 (1 Pending, 2 Running, 1 Succeeded)" in text.splitlines()
        assert f'\tdefault/{bad}\tFailed: Failed to pull image "{BAD_IMAGE}": ' in text

        assert await node.terminate() == 0

    stopped = json.loads(await vnode_status(node.root_dir, "-o", "json"))
    assert stopped["vnode"]["running"] is False and stopped["vnode"]["pid"] == facts["vnode"]["pid"]
    assert stopped["vnode"]["stopped"] is not None and stopped["vnode"]["healthz"] is None
    assert stopped["pods"]["byPhase"] == PHASES  # the containers run on; the store tells their phases
    assert pull_failure(stopped, bad) is not None
    assert stopped["runtime"]["answers"] is True
