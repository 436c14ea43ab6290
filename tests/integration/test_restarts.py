"""Container restarts as the pod worker decides them, on a runtime fast enough to race it.

The fake CRI runtime runs ``echo; exit 3`` the instant the container starts, so the container has
exited before the worker looks again after starting it. That look must not count as the worker
having seen the exit: the crash-loop back-off has to show within the relist period, not at the
next full resync (60 s), which is what a fast-failing container on containerd got in CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from integration.fakecri import FakeRuntime
from integration.node import VnodeProcess, busybox_pod, container_status


def backing_off(delay: str) -> Any:
    def check(pod: dict[str, Any]) -> bool:
        waiting = container_status(pod, "main")["state"].get("waiting", {})
        return waiting.get("reason") == "CrashLoopBackOff" and f"back-off {delay} " in waiting["message"]

    return check


async def test_a_container_that_exits_at_once_backs_off_without_waiting_for_a_resync(
    fake: FakeRuntime, tmp_path: Path
) -> None:
    node = VnodeProcess(tmp_path, fake.endpoint, node_name="fastcrash")
    await node.start()
    try:
        node.write_manifest("crash.yaml", busybox_pod("crash", "echo crashing; exit 3"))
        # 10 s of back-off plus a few relist periods; the resync that hid the bug is 60 s away.
        first = await node.wait_pod("crash", backing_off("10s"), timeout=20, what="back-off 10s")
        assert container_status(first, "main")["restartCount"] == 1
        second = await node.wait_pod("crash", backing_off("20s"), timeout=30, what="back-off 20s")
        assert container_status(second, "main")["restartCount"] == 2
    finally:
        await node.terminate()
