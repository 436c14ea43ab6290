"""vnode as a service: installed from the checkout with ``scripts/install.sh``, and telling its
service manager when it is ready and when it stops (``Type=notify``)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from integration.node import VnodeProcess

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
