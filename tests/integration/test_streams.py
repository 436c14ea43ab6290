"""kubectl exec, attach and port-forward against the node's local API, on real containerd.

Every session goes kubectl -> vnode (local API) -> containerd's streaming server. kubectl 1.32
asks for WebSocket ``v5.channel.k8s.io`` first (vnode translates it to SPDY for containerd 1.6);
``KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`` / ``KUBECTL_PORT_FORWARD_WEBSOCKETS=false`` make it
use SPDY, which vnode passes through; a plain WebSocket v4 client is passed through as well.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from integration.kube import binaries
from integration.kube.view import ClusterView
from integration.node import VnodeProcess, busybox_pod, free_port, is_running, running_node, wait_for
from tests.integration.test_local_api import client, kubeconfig_path, node, start_pod

__all__ = ["node"]  # the fixture, imported for this module's tests

SPDY = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}
PATHS = pytest.mark.parametrize("env", [{}, SPDY], ids=["websocket-v5", "spdy"])


class Target:
    """Where kubectl points: the node's local API, or the test control plane (which proxies
    pods/exec|attach|portforward to the node's kubelet API as kube-apiserver does)."""

    def __init__(self, node: VnodeProcess, kubeconfig: Path, plane: ClusterView | None) -> None:
        self.node = node
        self.kubeconfig = kubeconfig
        self.plane = plane
        self.namespace = plane.namespace if plane is not None else "default"

    async def start_pod(self, name: str, command: str, **spec: Any) -> str:
        """A running busybox pod; its name as kubectl knows it."""
        if self.plane is None:
            pod = busybox_pod(name, command, **spec)
            self.node.write_manifest(f"{name}.yaml", pod)
            await self.node.wait_pod(name, lambda p: is_running(p, "main"), what=f"{name} running")
            return self.node.static_name(name)
        pod = busybox_pod(name, command, nodeName=self.node.node_name, **spec)
        await self.plane.kubectl("apply", "-f", "-", stdin=json.dumps(pod).encode())

        async def running() -> bool | None:
            assert self.plane is not None
            out = await self.plane.kubectl("get", "pod", name, "-o", "json", check=False)
            return True if out.strip() and is_running(json.loads(out), "main") else None

        await wait_for(running, timeout=60, what=f"{name} running in the API")
        return name

    async def kubectl(
        self, *args: str, env: dict[str, str], stdin: bytes | None = None, timeout: float = 60
    ) -> tuple[int, bytes, bytes]:
        proc = await self.spawn(*args, env=env, stdin=stdin is not None)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(
                f"kubectl {' '.join(args)} did not finish in {timeout}s\n{self.node.log_tail()}"
            ) from None
        return proc.returncode or 0, out, err

    async def argv(self, *args: str) -> list[str]:
        """kubectl 1.37 (the one built with the test cluster) pointed at this target."""
        kubectl = await asyncio.to_thread(binaries)
        return [str(kubectl / "kubectl"), "--kubeconfig", str(self.kubeconfig), "-n", self.namespace, *args]

    async def spawn(self, *args: str, env: dict[str, str], stdin: bool = False) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *await self.argv(*args),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **env},
        )  # fmt: skip


@pytest.fixture(params=["local-api", "kube-apiserver"])
async def target(
    request: pytest.FixtureRequest, containerd: Any, cluster: ClusterView, tmp_path: Path
) -> AsyncIterator[Target]:
    """kubectl 1.37 against the node's local API, or against the real API server, which connects
    to the node's kubelet API with its kubelet client certificate and verifies the node's serving
    certificate against the cluster CA."""
    if request.param == "local-api":
        async with running_node(tmp_path, containerd.endpoint) as proc:
            await wait_for(lambda: _exists(kubeconfig_path(proc)), timeout=30, what="local.kubeconfig")
            yield Target(proc, kubeconfig_path(proc), None)
        return
    async with running_node(
        tmp_path, containerd.endpoint, node_name="edge1", extra_args=cluster.node_args()
    ) as proc:
        yield Target(proc, cluster.kubeconfig, cluster)


async def _exists(path: Path) -> bool:
    return path.exists()


@pytest.fixture
async def sleeper(target: Target) -> str:
    return await target.start_pod("sleeper", "sleep 3600")


@PATHS
async def test_exec_prints_both_streams_and_exits_with_the_code(
    target: Target, sleeper: str, env: dict[str, str]
) -> None:
    code, out, err = await target.kubectl(
        "exec", sleeper, "--", "sh", "-c", "echo out; echo err >&2; exit 3", env=env
    )
    assert out == b"out\n"
    assert b"err\n" in err
    assert code == 3, err


@PATHS
async def test_exec_stdin_is_piped_whole_and_closes(
    target: Target, sleeper: str, env: dict[str, str]
) -> None:
    data = os.urandom(10 * 1024 * 1024)
    code, out, err = await target.kubectl("exec", "-i", sleeper, "--", "md5sum", env=env, stdin=data)
    assert code == 0, err
    assert out.split()[0].decode() == hashlib.md5(data).hexdigest()
    # stdin EOF must reach cat, or this never ends
    code, out, err = await target.kubectl(
        "exec", "-i", sleeper, "--", "cat", env=env, stdin=b"x\n", timeout=30
    )
    assert (code, out) == (0, b"x\n"), err


@PATHS
async def test_port_forward_serves_two_concurrent_connections(target: Target, env: dict[str, str]) -> None:
    port = free_port()
    name = await target.start_pod(
        "web", f"mkdir -p /www && echo hello-from-pod > /www/index.html && httpd -f -p {port} -h /www"
    )
    local = free_port()
    proc = await target.spawn("port-forward", name, f"{local}:{port}", env=env)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert b"Forwarding from" in line, line

        async def fetch() -> str:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{local}/") as resp:
                return await resp.text()

        assert await asyncio.gather(fetch(), fetch()) == ["hello-from-pod\n"] * 2
        assert await fetch() == "hello-from-pod\n"
    finally:
        proc.terminate()
        await proc.wait()


@PATHS
async def test_attach_sends_stdin_to_the_container(target: Target, env: dict[str, str]) -> None:
    name = await target.start_pod(
        "reader", "while read line; do echo got:$line; done", container={"stdin": True}
    )
    proc = await target.spawn("attach", "-i", name, env=env, stdin=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"hello\n")
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line == b"got:hello\n"
    finally:
        proc.kill()
        await proc.wait()


async def test_exec_with_a_tty_follows_a_pane_resize(target: Target, sleeper: str) -> None:
    if shutil.which("tmux") is None:
        await asyncio.to_thread(_install, "tmux")
    tmux = Tmux(f"vnode-{os.getpid()}")
    command = " ".join(await target.argv("exec", "-it", sleeper, "--", "sh"))
    await tmux("new-session", "-d", "-x", "100", "-y", "30", command)
    try:
        await wait_for(lambda: tmux.shows("/ #"), timeout=30, what="a shell prompt in the pane")
        await tmux("send-keys", "stty size", "Enter")
        await wait_for(lambda: tmux.shows("30 100"), timeout=30, what="stty size 30 100")
        await tmux("resize-window", "-x", "120", "-y", "40")
        await tmux("send-keys", "clear; stty size", "Enter")
        await wait_for(lambda: tmux.shows("40 120"), timeout=30, what="stty size 40 120 after the resize")
        await tmux("send-keys", "exit", "Enter")
    finally:
        await tmux("kill-server", check=False)


class Tmux:
    """A private tmux server (``-L``) driven from the test."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, *args: str, check: bool = True) -> str:
        done = await asyncio.to_thread(
            subprocess.run, ["tmux", "-L", self.name, *args], capture_output=True, text=True, check=check
        )
        return done.stdout

    async def shows(self, text: str) -> bool | None:
        return True if text in await self("capture-pane", "-p") else None


def _install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, capture_output=True)


async def test_plain_websocket_v4_client(node: VnodeProcess) -> None:
    """A v4 WebSocket client (no kubectl) passes through to the runtime: channels and the status."""
    sleeper = await start_pod(node, "sleeper", "sleep 3600")
    session, server = client(node)
    async with session:
        url = server.replace("https", "wss") + f"/api/v1/namespaces/default/pods/{sleeper}/exec"
        params = [("command", "sh"), ("command", "-c"), ("command", "echo hi; exit 7"),
                  ("stdout", "true"), ("stderr", "true")]  # fmt: skip
        got: dict[int, bytes] = {}
        async with session.ws_connect(url, params=params, protocols=("v4.channel.k8s.io",)) as ws:
            assert ws.protocol == "v4.channel.k8s.io"
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data:
                    got[msg.data[0]] = got.get(msg.data[0], b"") + msg.data[1:]
        assert got.get(1) == b"hi\n"
        status = json.loads(got[3])
        assert status["status"] == "Failure"
        assert status["details"]["causes"][0] == {"reason": "ExitCode", "message": "7"}


async def test_bad_requests_get_clear_errors(node: VnodeProcess) -> None:
    sleeper = await start_pod(node, "sleeper", "sleep 3600")
    session, server = client(node)
    async with session:
        base = f"{server}/api/v1/namespaces/default/pods"
        async with session.get(f"{base}/missing/exec", params={"command": "true", "stdout": "1"}) as resp:
            assert resp.status == 404
            assert "missing" in (await resp.json())["message"]
        params = {"command": "true", "stdout": "1", "container": "nope"}
        async with session.get(f"{base}/{sleeper}/exec", params=params) as resp:
            assert resp.status == 404
            assert "nope" in (await resp.json())["message"]
        async with session.get(f"{base}/{sleeper}/exec", params={"command": "true", "stdout": "1"}) as resp:
            assert resp.status == 400
            assert "Upgrade request required" in (await resp.json())["message"]
        async with session.get(f"{base}/{sleeper}/exec", params={"command": "true"}) as resp:
            assert resp.status == 400
            assert "at least 1 of stdin, stdout, stderr" in (await resp.json())["message"]


async def test_a_dropped_client_leaves_nothing_behind(target: Target, sleeper: str) -> None:
    """kubectl killed mid-exec: the exec'd process sees its stdin end and goes, and vnode's
    descriptors return to what they were. (A process that neither reads stdin nor writes stays,
    as with kubelet: CRI has no call to signal an exec'd process.)"""
    assert target.node.proc is not None
    pid = target.node.proc.pid
    before = len(os.listdir(f"/proc/{pid}/fd"))
    for env in ({}, SPDY):
        proc = await target.spawn("exec", "-i", sleeper, "--", "sh", "-c", f"cat >/dev/null; echo {MARK}",
                                  env=env, stdin=True)  # fmt: skip
        await wait_for(
            lambda: _exec_running(target, sleeper, True), timeout=30, what="the exec'd cat to start"
        )
        proc.kill()
        await proc.wait()
        await wait_for(
            lambda: _exec_running(target, sleeper, False), timeout=30, what="the exec'd cat to end"
        )

    async def descriptors_back() -> bool | None:
        return True if len(os.listdir(f"/proc/{pid}/fd")) <= before else None

    await wait_for(descriptors_back, timeout=30, what=f"vnode's descriptors back to {before}")


MARK = "vnode-dropped-client"


async def _exec_running(target: Target, pod: str, want: bool) -> bool | None:
    _, out, _ = await target.kubectl("exec", pod, "--", "ps", env={})
    running = MARK.encode() in out
    return True if running == want else None
