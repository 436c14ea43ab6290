"""Offline autonomy: a node cut off from its control plane keeps, and restarts, its pods.

The control plane is the test one, killed to cut the link; the node is a real ``vnode run`` on
the session's containerd; SIGKILL stands for a power cut.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from integration.controlplane import ControlPlaneProcess
from integration.node import running_node, wait_for
from tests.integration.test_cluster import CONFIGURED, api_running


async def test_pod_with_config_maps_and_secrets_restarts_offline_from_the_cache(
    containerd: Any, tmp_path: Path
) -> None:
    """Online, a pod takes env and files from a configMap and a secret. Then the control plane
    goes away, vnode is SIGKILLed and the pod's sandbox is removed (as a host reboot would): vnode,
    started again with no master answering, recreates the pod with the same env and files from
    its store, where the secret was kept sealed."""
    plane = ControlPlaneProcess(tmp_path)
    await plane.start()
    try:
        async with running_node(
            tmp_path, containerd.endpoint, node_name="edge1", extra_args=["--master", plane.url]
        ) as node:
            await plane.kubectl("apply", "-f", "-", stdin=CONFIGURED.encode())
            await wait_for(lambda: api_running(plane, "configured"), what="the configured pod to run")
            await node.log_containing("configured", "main", b"env secret edge unset")
            before = (await node.pod("configured") or {})["status"]["containerStatuses"][0]["containerID"]

            await plane.kill()
            await node.kill()
            assert containerd.remove_sandboxes() == 1
            for old_log in node.logs_dir.iterdir():
                shutil.rmtree(old_log)
            disk = (node.root_dir / "store" / "data.mdb").read_bytes()
            assert b"c2VjcmV0" not in disk  # the secret's value, base64 as the API holds it

            await node.start()

            async def recreated() -> str | None:
                pod = await node.pod("configured")
                statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
                running = statuses and "running" in statuses[0]["state"]
                return (
                    statuses[0]["containerID"] if running and statuses[0]["containerID"] != before else None
                )

            await wait_for(recreated, timeout=60, what="the pod recreated offline")
            await node.log_containing("configured", "main", b"env secret edge unset")
            await node.log_containing("configured", "main", b"file hello-1")
    finally:
        await plane.kill()
