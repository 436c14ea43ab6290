"""Many pods on one node, on the fake CRI runtime: all run, survive a SIGKILL of vnode, go away.

Functional only (the figures are ``bench/scale.py``'s): 200 static pods must all be Running, be
re-adopted after vnode is killed -- same container IDs, no sandbox or container created twice --
and all be removed from the runtime when their manifests go.
"""

from __future__ import annotations

from pathlib import Path

from integration.fakecri import FakeRuntime
from integration.node import VnodeProcess, busybox_pod, container_status, is_running, wait_for

PODS = 200


async def test_200_pods_run_are_readopted_once_and_are_deleted(fake: FakeRuntime, tmp_path: Path) -> None:
    node = VnodeProcess(
        tmp_path, fake.endpoint, node_name="manypods", extra_args=["-v=0", f"--max-pods={PODS}"]
    )
    await node.start()
    try:
        for i in range(PODS):
            node.write_manifest(f"p{i}.yaml", busybox_pod(f"p{i}", "sleep 86400"))
        names = {node.static_name(f"p{i}") for i in range(PODS)}

        async def all_running() -> dict[str, str] | None:
            pods = await node.pods()
            if set(pods) != names or not all(is_running(p, "main") for p in pods.values()):
                return None
            return {name: container_status(p, "main")["containerID"] for name, p in pods.items()}

        before = await wait_for(all_running, timeout=300, interval=1, what=f"{PODS} pods Running")
        assert len(set(before.values())) == PODS
        assert fake.counts() == (PODS, PODS)

        await node.kill()
        await node.start()

        async def readopted() -> dict[str, str] | None:
            if (await node.get("/healthz"))[0] != 200:
                return None
            return await all_running()

        after = await wait_for(readopted, timeout=300, interval=1, what=f"{PODS} pods re-adopted")
        assert after == before, "a pod's container changed across the restart"
        assert fake.counts() == (PODS, PODS), "the restarted node created sandboxes or containers again"

        for path in node.manifests.glob("*.yaml"):
            path.unlink()

        async def all_gone() -> bool:
            return not await node.pods() and fake.counts() == (0, 0)

        await wait_for(all_gone, timeout=300, interval=1, what="every pod removed from the runtime")
    finally:
        if node.proc is not None and node.proc.returncode is None:
            await node.terminate()
