"""vnode as a service: installed from the checkout with ``scripts/install.sh``, telling its
service manager when it is ready and when it stops (``Type=notify``), and run by hand with
``scripts/run-standalone.sh``, where Ctrl-C stops vnode and nothing else."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from integration.containerd import Containerd, process_alive
from integration.node import VnodeProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_install_gives_a_vnode_on_path_a_config_and_a_unit(tmp_path: Path) -> None:
    bin_dir, etc, units = tmp_path / "bin", tmp_path / "etc", tmp_path / "units"
    args = ["--prefix", str(tmp_path / "opt"), "--bin-dir", str(bin_dir), "--config-dir", str(etc)]
    done = subprocess.run(
        [str(ROOT / "scripts" / "install.sh"), *args, "--unit-dir", str(units)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    version = subprocess.run([str(bin_dir / "vnode"), "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("vnode ")
    assert (etc / "vnode.yaml").read_text() == (ROOT / "conf" / "vnode.yaml").read_text()
    unit = (units / "vnode.service").read_text()
    assert f"ExecStart={bin_dir}/vnode run --config {etc}/vnode.yaml" in unit
    assert "Type=notify" in unit and "KillMode=process" in unit
    if shutil.which("systemd-analyze"):  # where systemd is installed, the unit must pass its checks
        check = subprocess.run(
            ["systemd-analyze", "verify", str(units / "vnode.service")], capture_output=True, text=True
        )
        problems = [line for line in check.stderr.splitlines() if "vnode.service" in line]
        assert not problems, check.stderr


async def test_the_service_manager_hears_ready_and_stopping(
    containerd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        manager.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        node = VnodeProcess(tmp_path, containerd.endpoint)
        await node.start()  # returns once /healthz answers
        loop = asyncio.get_running_loop()
        ready = await asyncio.wait_for(loop.sock_recv(manager, 4096), 30)
        assert ready.split(b"\n")[0] == b"READY=1", ready
        await node.terminate()
        stopping = await asyncio.wait_for(loop.sock_recv(manager, 4096), 30)
        assert stopping == b"STOPPING=1"


def started_containerd(config: Path) -> int | None:
    """The pid of the containerd running ``config`` (this test's own: its config is in a temp dir)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            args[0].endswith(b"containerd")
            and str(config).encode() in args
            and process_alive(int(entry.name))
        ):
            return int(entry.name)
    return None


def started_at(pid: int) -> str:
    """The process's start time in clock ticks since boot: a pid reused by another process differs."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


async def test_ctrl_c_on_run_standalone_stops_vnode_only(tmp_path: Path) -> None:
    """The README's run command, pointed at a private containerd config and socket (its own
    environment variables), started as a terminal starts a command: a process group of its own.
    Once the sample pod runs, SIGINT to the whole group (what Ctrl-C sends): vnode exits 0, and
    the containerd the script started and the pod's containers are the same ones, still running."""
    runtime = Containerd(tmp_path / "containerd")
    config = runtime.prepare()
    node = "ctrl-c"
    env = {
        **os.environ,
        "CONTAINERD_ADDRESS": runtime.address,
        "CONTAINERD_SNAPSHOTTER": runtime.snapshotter,
        "VNODE_CONTAINERD_CONFIG": str(config),
        "VNODE_CONTAINERD_LOG": str(runtime.log_file),
    }
    args = [
        str(ROOT / "scripts" / "run-standalone.sh"),
        f"--hostname-override={node}",
        f"--root-dir={tmp_path / 'root'}",
        f"--pod-logs-dir={tmp_path / 'logs'}",
        "--port=0", "--healthz-port=0", "--local-api-port=0", "--node-ip=127.0.0.1",
    ]  # fmt: skip
    output = tmp_path / "run-standalone.log"
    with output.open("wb") as out:
        script = await asyncio.create_subprocess_exec(
            *args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:

        async def sample_pod_running() -> list[str] | None:
            if script.returncode is not None:
                raise AssertionError(
                    f"run-standalone.sh exited with {script.returncode}:\n{output.read_text()}"
                )
            if started_containerd(config) is None:
                return None
            try:
                containers = await asyncio.to_thread(runtime.running_containers)
            except grpc.RpcError:  # started, not answering yet
                return None
            return sorted(containers.get(f"hello-{node}", [])) or None

        before = await wait_for(sample_pod_running, timeout=180, what="the sample pod's container running")
        pid = started_containerd(config)
        assert pid is not None
        runtime.adopt(pid)  # stopped with the rest of this test's runtime at the end
        assert os.getsid(pid) not in (script.pid, os.getsid(0)), "containerd runs in the script's session"
        born = started_at(pid)

        os.killpg(script.pid, signal.SIGINT)  # a terminal's Ctrl-C: the foreground process group
        code = await asyncio.wait_for(script.wait(), 60)
        assert code == 0, output.read_text()

        assert process_alive(pid) and started_at(pid) == born, "containerd was stopped"
        assert started_containerd(config) == pid
        after = sorted((await asyncio.to_thread(runtime.running_containers)).get(f"hello-{node}", []))
        assert after == before, "the sample pod's containers were stopped or replaced"
    finally:
        if script.returncode is None:
            os.killpg(script.pid, signal.SIGKILL)
            await script.wait()
        left = started_containerd(config)
        if left is not None:
            runtime.adopt(left)
        else:  # stopped with vnode (what this test is for): started again on the same root and
            # state, it finds the shims, and stop() then removes the pod instead of orphaning it
            await asyncio.to_thread(runtime.start)
        await asyncio.to_thread(runtime.stop)
