"""A standalone node on a real containerd: static pods, lifecycle, status, logs, restart.

Each test runs ``vnode run`` as a subprocess against the session's containerd (see conftest) and
observes it only from outside: the kubelet API, the log files, and CRI calls of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp

from integration.containerd import Containerd
from integration.node import (
    VnodeProcess,
    busybox_pod,
    container_status,
    free_port,
    is_running,
    wait_for,
)
from vnode.provider.types import ContainerState
from vnode.runtime import labels
from vnode.runtime.cri import CriClient


async def container_ids(cri: CriClient, node: VnodeProcess) -> dict[tuple[str, str], tuple[str, str]]:
    """(pod name, container name) -> (container id, state) of every container the node manages."""
    result = {}
    for c in await cri.list_containers({labels.NODE_LABEL: node.node_name}):
        key = (c.labels[labels.POD_NAME], c.labels[labels.CONTAINER_NAME])
        result[key] = (c.id, ContainerState.RUNNING.name if c.state == 1 else str(c.state))
    return result


async def test_static_pod_runs_and_its_log_is_served(node: VnodeProcess) -> None:
    node.write_manifest("hello.yaml", busybox_pod("hello", "echo hello from vnode; sleep 3600"))
    pod = await node.wait_pod("hello", lambda p: is_running(p, "main"), what="hello running")

    status = pod["status"]
    assert pod["metadata"]["namespace"] == "default"
    assert pod["spec"]["nodeName"] == node.node_name
    assert pod["metadata"]["annotations"]["kubernetes.io/config.source"] == "file"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    main = container_status(pod, "main")
    assert main["containerID"].startswith("containerd://")
    assert main["imageID"].startswith("sha256:")
    assert main["restartCount"] == 0 and main["ready"] is True
    assert status["podIP"] == status["hostIP"] == "127.0.0.1"

    assert (
        await node.log_containing(node.static_name("hello"), "main", b"hello from vnode")
        == b"hello from vnode\n"
    )


async def test_init_containers_gate_app_containers_and_share_an_empty_dir(node: VnodeProcess) -> None:
    pod = busybox_pod("gated", "cat /data/ready; cat /data/second; sleep 3600")
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    mount = [{"name": "data", "mountPath": "/data"}]
    pod["spec"]["containers"][0]["volumeMounts"] = mount
    pod["spec"]["initContainers"] = [
        {"name": "first", "image": "docker.io/library/busybox:1.35", "volumeMounts": mount,
         "command": ["sh", "-c", "echo first-done > /data/ready"]},
        {"name": "second", "image": "docker.io/library/busybox:1.35", "volumeMounts": mount,
         "command": ["sh", "-c", "test -f /data/ready && echo second-done > /data/second"]},
    ]  # fmt: skip
    node.write_manifest("gated.yaml", pod)
    running = await node.wait_pod("gated", lambda p: is_running(p, "main"), what="gated running")

    first = container_status(running, "first")["state"]["terminated"]
    second = container_status(running, "second")["state"]["terminated"]
    main = container_status(running, "main")["state"]["running"]
    assert first["exitCode"] == 0 and first["reason"] == "Completed"
    assert second["exitCode"] == 0
    assert first["finishedAt"] <= second["startedAt"] and second["finishedAt"] <= main["startedAt"]

    body = await node.log_containing(node.static_name("gated"), "main", b"second-done")
    assert body == b"first-done\nsecond-done\n"


async def test_two_containers_share_an_empty_dir(node: VnodeProcess) -> None:
    pod = busybox_pod("shared", "i=0; while true; do echo $i > /shared/counter; i=$((i+1)); sleep 0.2; done")
    pod["spec"]["volumes"] = [{"name": "shared", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "shared", "mountPath": "/shared"}]
    pod["spec"]["containers"].append(
        {"name": "reader", "image": "docker.io/library/busybox:1.35",
         "command": ["sh", "-c", "until [ -s /in/counter ]; do sleep 0.1; done; echo got $(cat /in/counter); "
                                 "df -k /in | tail -1; sleep 3600"],
         "volumeMounts": [{"name": "shared", "mountPath": "/in", "readOnly": True}]}
    )  # fmt: skip
    node.write_manifest("shared.yaml", pod)
    await node.wait_pod("shared", lambda p: is_running(p, "main", "reader"))

    async def logged() -> bytes | None:
        code, body = await node.get(f"/containerLogs/default/{node.static_name('shared')}/reader")
        return body if code == 200 and body.startswith(b"got ") and b"tmpfs" in body else None

    body = await wait_for(logged, what="reader's log")
    assert body.split(b"\n")[1].split()[1] == b"1024"  # a 1 MiB tmpfs: medium Memory with its sizeLimit


async def test_crash_loop_back_off_grows(node: VnodeProcess) -> None:
    node.write_manifest("crash.yaml", busybox_pod("crash", "echo crashing; exit 3"))

    def backing_off(delay: str) -> Any:
        def check(pod: dict[str, Any]) -> bool:
            s = container_status(pod, "main")
            waiting = s["state"].get("waiting", {})
            return waiting.get("reason") == "CrashLoopBackOff" and f"back-off {delay} " in waiting["message"]

        return check

    first = await node.wait_pod("crash", backing_off("10s"), timeout=60, what="back-off 10s")
    s = container_status(first, "main")
    assert s["lastState"]["terminated"]["exitCode"] == 3
    assert s["lastState"]["terminated"]["reason"] == "Error"
    assert s["restartCount"] >= 1
    assert first["status"]["phase"] == "Running"  # restartPolicy Always: kubelet keeps it Running
    assert {c["type"]: c.get("reason") for c in first["status"]["conditions"]}[
        "Ready"
    ] == "ContainersNotReady"
    second = await node.wait_pod("crash", backing_off("20s"), timeout=60, what="back-off 20s")
    assert container_status(second, "main")["restartCount"] > s["restartCount"]

    code, body = await node.get(f"/containerLogs/default/{node.static_name('crash')}/main", previous="true")
    assert code == 200 and body == b"crashing\n"


async def test_missing_image_backs_off_and_the_node_stays_healthy(node: VnodeProcess) -> None:
    pod = busybox_pod("noimage", "true", container={"image": "registry.invalid/nothing/here:1.0"})
    node.write_manifest("noimage.yaml", pod)

    def reason(pod: dict[str, Any]) -> str:
        return str(container_status(pod, "main")["state"].get("waiting", {}).get("reason"))

    await node.wait_pod("noimage", lambda p: reason(p) == "ErrImagePull", what="ErrImagePull")
    backing = await node.wait_pod(
        "noimage", lambda p: reason(p) == "ImagePullBackOff", what="ImagePullBackOff"
    )
    assert backing["status"]["phase"] == "Pending"
    code, body = await node.get("/healthz")
    assert (code, body) == (200, b"ok")


async def test_env_from_field_refs(node: VnodeProcess) -> None:
    pod = busybox_pod("envs", "env | sort; sleep 3600", container={"env": [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
        {"name": "GREETING", "value": "hi $(POD_NAME)"},
    ]})  # fmt: skip
    pod["metadata"]["labels"] = {"tier": "edge"}
    node.write_manifest("envs.yaml", pod)
    running = await node.wait_pod("envs", lambda p: is_running(p, "main"))

    async def env() -> dict[str, str] | None:
        code, body = await node.get(f"/containerLogs/default/{node.static_name('envs')}/main")
        lines = dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)
        return lines if code == 200 and "TIER" in lines else None

    values = await wait_for(env, what="the env dump")
    name = node.static_name("envs")
    assert values["POD_NAME"] == name
    assert values["POD_NS"] == "default"
    assert values["POD_UID"] == running["metadata"]["uid"]
    assert values["NODE"] == node.node_name
    assert values["POD_IP"] == values["HOST_IP"] == "127.0.0.1"
    assert values["TIER"] == "edge"
    assert values["GREETING"] == f"hi {name}"


async def test_sigkill_and_restart_keep_every_container(node: VnodeProcess, cri: CriClient) -> None:
    for i in range(3):
        node.write_manifest(f"keep{i}.yaml", busybox_pod(f"keep{i}", "sleep 3600"))
    for i in range(3):
        await node.wait_pod(f"keep{i}", lambda p: is_running(p, "main"))
    before = await container_ids(cri, node)
    assert len(before) == 3
    created = {name: pod["metadata"] for name, pod in (await node.pods()).items()}

    await node.kill()
    await node.start()
    for i in range(3):
        pod = await node.wait_pod(f"keep{i}", lambda p: is_running(p, "main"))
        assert container_status(pod, "main")["restartCount"] == 0
        # A static pod keeps its creation time, so its AGE, across restarts (to the microsecond
        # in config.seen, which the creationTimestamp is cut from).
        meta, was = pod["metadata"], created[pod["metadata"]["name"]]
        assert meta["creationTimestamp"] == was["creationTimestamp"]
        assert (
            meta["annotations"]["kubernetes.io/config.seen"]
            == was["annotations"]["kubernetes.io/config.seen"]
        )
    assert await container_ids(cri, node) == before


async def test_sigkill_while_pods_start_starts_each_application_once(
    node: VnodeProcess, cri: CriClient, tmp_path: Path
) -> None:
    """vnode is killed while 30 pods are being started, ideally with a container created and not
    yet started: after the restart every pod runs once, with no restart counted that did not
    happen, and nothing is left over. Each container appends a line to a host file as it starts,
    so an application started twice shows as a second line."""
    starts = tmp_path / "starts"
    starts.mkdir()
    count = 30
    for i in range(count):
        pod = busybox_pod(
            f"start{i}",
            f"echo started >> /starts/start{i}; sleep 3600",
            volumes=[{"name": "starts", "hostPath": {"path": str(starts)}}],
            container={"volumeMounts": [{"name": "starts", "mountPath": "/starts"}]},
        )
        node.write_manifest(f"start{i}.yaml", pod)

    async def mid_start() -> bool | None:
        states = [state for _, state in (await container_ids(cri, node)).values()]
        created = states.count("0")  # CRI's CONTAINER_CREATED, as container_ids gives it
        return True if created or states.count(ContainerState.RUNNING.name) >= count // 2 else None

    await wait_for(mid_start, timeout=120, interval=0.02, what="pods being started")
    await node.kill()
    await node.start()
    for i in range(count):
        pod = await node.wait_pod(f"start{i}", lambda p: is_running(p, "main"), timeout=120)
        assert container_status(pod, "main")["restartCount"] == 0, pod["metadata"]["name"]

    async def settled() -> dict[tuple[str, str], tuple[str, str]] | None:
        found = await container_ids(cri, node)
        sandboxes = await cri.list_pod_sandboxes({labels.NODE_LABEL: node.node_name})
        return found if len(found) == count and len(sandboxes) == count else None

    found = await wait_for(settled, timeout=60, what="one sandbox and one container per pod in the runtime")
    assert all(state == ContainerState.RUNNING.name for _, state in found.values()), found
    lines = {path.name: path.read_text().count("started") for path in starts.iterdir()}
    assert lines == {f"start{i}": 1 for i in range(count)}


async def test_removing_a_manifest_removes_the_pod(node: VnodeProcess, cri: CriClient) -> None:
    path = node.write_manifest("gone.yaml", busybox_pod("gone", "trap 'exit 0' TERM; sleep 3600 & wait"))
    await node.wait_pod("gone", lambda p: is_running(p, "main"))
    assert await container_ids(cri, node)
    path.unlink()

    async def removed() -> bool:
        return (
            not await container_ids(cri, node)
            and not await cri.list_pod_sandboxes({labels.NODE_LABEL: node.node_name})
            and node.static_name("gone") not in await node.pods()
        )

    await wait_for(removed, what="the pod's containers and sandbox to be removed")


async def test_bad_manifests_never_crash_the_node(node: VnodeProcess) -> None:
    (node.manifests / "garbage.yaml").write_text("kind: Pod\nmetadata: [unclosed\n")
    (node.manifests / "notapod.yaml").write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    node.write_manifest("invalid.yaml", busybox_pod("Bad_Name", "true"))
    node.write_manifest("nocmd.yaml", busybox_pod("nocmd", "", container={"command": ["/no/such/binary"]}))
    node.write_manifest("dup1.yaml", busybox_pod("dup", "sleep 3600"))
    node.write_manifest("dup2.yaml", busybox_pod("dup", "echo second; sleep 3600"))
    node.write_manifest("ok.yaml", {**busybox_pod("ok", "sleep 3600"), "unknownField": 1})

    await node.wait_pod("ok", lambda p: is_running(p, "main"))
    await node.wait_pod("dup", lambda p: is_running(p, "main"))
    rejected = await node.wait_pod("Bad_Name", lambda p: p["status"].get("phase") == "Failed")
    assert rejected["status"]["reason"] == "InvalidPod"
    assert "metadata.name" in rejected["status"]["message"]

    def start_failed(pod: dict[str, Any]) -> bool:
        s = container_status(pod, "main")
        last = s.get("lastState", {}).get("terminated", {})
        waiting = s["state"].get("waiting", {})
        return bool(last) and waiting.get("reason") in ("CrashLoopBackOff", "RunContainerError")

    failed = await node.wait_pod("nocmd", start_failed, what="nocmd to fail starting")
    assert "no/such/binary" in json.dumps(failed["status"])
    code, _ = await node.get("/healthz")
    assert code == 200
    log = node.log_tail(400)
    assert "garbage.yaml" in log and "can't be parsed" in log
    assert "already defined" in log
    assert "unknown field 'unknownField'" in log


async def test_container_logs_options(node: VnodeProcess) -> None:
    node.write_manifest(
        "talk.yaml",
        # The runtime copies stdout and stderr through separate pipes, so the order of lines from
        # the two streams in the file is only certain when they are written a while apart.
        busybox_pod("talk", "for i in 1 2 3 4 5; do echo line$i; done; sleep 1; echo oops >&2; sleep 3600"),
    )
    await node.wait_pod("talk", lambda p: is_running(p, "main"))
    path = f"/containerLogs/default/{node.static_name('talk')}/main"

    async def full() -> bytes | None:
        code, body = await node.get(path)
        return body if code == 200 and b"oops" in body else None

    assert await wait_for(full) == b"line1\nline2\nline3\nline4\nline5\noops\n"
    assert await node.get(path, tailLines="2") == (200, b"line5\noops\n")
    assert await node.get(path, limitBytes="8") == (200, b"line1\nli")
    assert await node.get(path, stream="Stderr") == (200, b"oops\n")
    assert (await node.get(path, sinceSeconds="3600"))[1].count(b"\n") == 6
    code, body = await node.get(path, timestamps="true", tailLines="1")
    stamp, text = body.split(b" ", 1)
    assert code == 200 and text == b"oops\n" and len(stamp) == len(b"2026-01-01T00:00:00.000000000Z")

    assert (await node.get(path, tailLines="abc"))[0] == 400
    assert (await node.get(path, sinceSeconds="1", sinceTime="2026-01-01T00:00:00Z"))[0] == 422
    assert (await node.get(path, previous="true"))[0] == 400
    assert (await node.get(f"/containerLogs/default/{node.static_name('talk')}/nope"))[0] == 404
    assert (await node.get("/containerLogs/default/nopod/main"))[0] == 404


async def test_container_logs_follow_streams_until_the_container_ends(node: VnodeProcess) -> None:
    node.write_manifest(
        "ticker.yaml",
        busybox_pod(
            "ticker",
            "echo start; while [ ! -f /tmp/stop ]; do "
            "if [ -f /tmp/more ]; then echo more; rm /tmp/more; fi; sleep 0.1; done; echo bye",
            restartPolicy="Never",
        ),
    )
    pod = await node.wait_pod("ticker", lambda p: is_running(p, "main"))
    cid = container_status(pod, "main")["containerID"].split("://")[1]
    url = f"{node.url}/containerLogs/default/{node.static_name('ticker')}/main"
    client = CriClient(node.endpoint, timeout=30)
    try:
        async with node.session().get(url, params={"follow": "true"}) as resp:
            assert resp.status == 200
            assert await resp.content.readline() == b"start\n"
            await client.exec_sync(cid, ["touch", "/tmp/more"])
            assert await asyncio.wait_for(resp.content.readline(), 30) == b"more\n"
            await client.exec_sync(cid, ["touch", "/tmp/stop"])
            assert await asyncio.wait_for(resp.content.readline(), 30) == b"bye\n"
            # The container has ended: the stream ends too.
            assert await asyncio.wait_for(resp.content.read(), 30) == b""
    finally:
        await client.close()
    done = await node.wait_pod("ticker", lambda p: p["status"]["phase"] == "Succeeded")
    assert container_status(done, "main")["state"]["terminated"]["reason"] == "Completed"


async def test_a_taken_port_is_its_own_error_not_a_config_error(containerd: Any, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = VnodeProcess(
            tmp_path, containerd.endpoint, extra_args=[f"--port={port}", "--address=127.0.0.1"]
        )
        await proc.start(wait=False)
        assert proc.proc is not None
        assert await proc.proc.wait() == 5
    log = proc.log_tail()
    assert f"cannot listen: server.port: kubelet: cannot listen on 127.0.0.1:{port}" in log, log
    assert "config error" not in log


async def test_a_socket_path_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    not_a_socket = tmp_path / "plain-file"
    not_a_socket.write_text("")
    proc = VnodeProcess(tmp_path, f"unix://{not_a_socket}")
    await proc.start(wait=False)
    assert proc.proc is not None
    assert await proc.proc.wait() == 2
    assert "is not a socket" in proc.log_tail()


async def test_missing_runtime_socket_keeps_serving_healthz(tmp_path: Path) -> None:
    proc = VnodeProcess(tmp_path, f"unix://{tmp_path}/absent.sock")
    await proc.start()
    try:

        async def unhealthy() -> bytes | None:
            code, body = await proc.get("/healthz", verbose="1")
            return body if code == 500 else None

        body = await wait_for(unhealthy, what="/healthz to report the runtime")
        assert b"[-]runtime failed" in body
        assert (await proc.get("/healthz/ping"))[0] == 200
    finally:
        assert await proc.terminate() == 0


def test_harness_runs_as_root() -> None:
    assert os.geteuid() == 0, "integration tests start containerd and need root"


async def test_host_port_maps_to_a_pod_network_container(node: VnodeProcess) -> None:
    port = free_port()
    pod = busybox_pod(
        "web",
        "mkdir -p /www && echo served-by-vnode > /www/index.html && httpd -f -p 80 -h /www",
        container={"ports": [{"containerPort": 80, "hostPort": port, "protocol": "TCP"}]},
    )
    pod["spec"]["hostNetwork"] = False
    node.write_manifest("web.yaml", pod)
    running = await node.wait_pod("web", lambda p: is_running(p, "main"))
    assert running["status"]["podIP"].startswith("10.89.")  # the harness's bridge network
    assert running["status"]["hostIP"] == "127.0.0.1"

    async def page() -> bytes | None:
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as resp:
                return await resp.read() if resp.status == 200 else None
        except aiohttp.ClientError:
            return None

    assert await wait_for(page, what=f"the page on hostPort {port}") == b"served-by-vnode\n"


async def test_pods_removed_while_vnode_was_down_are_cleaned_up(node: VnodeProcess, cri: CriClient) -> None:
    stay = node.write_manifest("stay.yaml", busybox_pod("stay", "sleep 3600"))
    leave = node.write_manifest("leave.yaml", busybox_pod("leave", "sleep 3600"))
    for name in ("stay", "leave"):
        await node.wait_pod(name, lambda p: is_running(p, "main"))
    before = await container_ids(cri, node)
    await node.kill()
    leave.unlink()
    await node.start()

    async def only_stay_left() -> bool:
        ids = await container_ids(cri, node)
        return set(ids) == {(node.static_name("stay"), "main")}

    await wait_for(only_stay_left, what="the removed pod's containers to go")
    assert (await container_ids(cri, node))[(node.static_name("stay"), "main")] == before[
        (node.static_name("stay"), "main")
    ]
    assert stay.exists()


async def test_runtime_that_appears_later_is_used(tmp_path: Path) -> None:
    late = Containerd(tmp_path / "late-containerd")
    proc = VnodeProcess(tmp_path, late.endpoint)
    await proc.start()
    try:

        async def status() -> int:
            return (await proc.get("/healthz"))[0]

        assert await wait_for(lambda: _equals(status(), 500), what="runtime reported unhealthy")
        await asyncio.to_thread(late.start)
        assert await wait_for(lambda: _equals(status(), 200), what="runtime reported healthy")
        proc.write_manifest("late.yaml", busybox_pod("late", "sleep 3600"))
        await proc.wait_pod("late", lambda p: is_running(p, "main"))
    finally:
        await proc.terminate()
        await asyncio.to_thread(late.stop)


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_a_second_vnode_on_the_same_root_dir_exits_4(node: VnodeProcess, tmp_path: Path) -> None:
    """The root dir's lock: a second ``vnode run`` on it (other ports) exits at once with code 4
    naming the holder, the first keeps running, ``vnode status`` still reads, and after the first
    is SIGKILLed the lock file it left does not block a new start."""
    second = VnodeProcess(tmp_path / "second", node.endpoint)
    second.root_dir = node.root_dir
    proc = await asyncio.create_subprocess_exec(
        *second.args(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:  # it started (no lock): it must not outlive the test
            proc.kill()
            await proc.wait()
    assert proc.returncode == 4, out.decode()
    pid = node.proc.pid if node.proc is not None else None
    assert f"root dir {node.root_dir} is in use by vnode pid {pid} (started " in out.decode()
    assert (await node.get("/healthz"))[0] == 200

    status = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vnode", "status", f"--root-dir={node.root_dir}", stdout=asyncio.subprocess.PIPE
    )
    report, _ = await status.communicate()
    assert status.returncode == 0 and f"store {node.root_dir}" in report.decode()

    await node.kill()
    assert (node.root_dir / "vnode.lock").exists()
    await node.start()  # returns once /healthz/ping answers; /healthz also waits for the re-adoption

    async def healthy() -> bool:
        return (await node.get("/healthz"))[0] == 200

    await wait_for(healthy, what="/healthz after the restart")


async def test_killing_event_is_recorded_when_the_stop_begins(node: VnodeProcess, cri: CriClient) -> None:
    """A container that ignores SIGTERM runs out its grace period; the Killing Event is recorded at
    its start, while the container is still running, not when it has ended."""
    pod = busybox_pod("slow", "trap '' TERM; while true; do sleep 1; done", terminationGracePeriodSeconds=30)
    path = node.write_manifest("slow.yaml", pod)
    await node.wait_pod("slow", lambda p: is_running(p, "main"))
    path.unlink()
    line = f"pod/default/{node.static_name('slow')} Killing: Stopping container main (grace period 30s)"

    async def killing_logged() -> bool:
        return line in node.log_tail(400)

    await wait_for(killing_logged, what="the Killing event")
    states = [state for _, state in (await container_ids(cri, node)).values()]
    assert states == ["RUNNING"], "the Killing event came only after the container had stopped"
