"""Smoke test of the harness itself: the private containerd runs pods from the locally built images.

Uses the plain synchronous CRI stubs (not vnode's client) so that a failure here points at the
harness (containerd config, images, CNI) rather than at vnode.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from integration.containerd import Containerd
from integration.images import BUSYBOX

NODE = api_pb2.NamespaceMode.Value("NODE")
EXITED = api_pb2.ContainerState.Value("CONTAINER_EXITED")


@pytest.fixture
def runtime(containerd: Containerd) -> Iterator[api_pb2_grpc.RuntimeServiceStub]:
    with grpc.insecure_channel(containerd.endpoint) as channel:
        yield api_pb2_grpc.RuntimeServiceStub(channel)


def sandbox_config(log_dir: Path, host_network: bool) -> api_pb2.PodSandboxConfig:
    name = f"harness-{uuid.uuid4().hex[:8]}"
    options = api_pb2.NamespaceOption(network=NODE if host_network else api_pb2.NamespaceMode.Value("POD"))
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=str(uuid.uuid4())),
        # As kubelet does: a hostNetwork pod shares the node's UTS namespace, so it sets no hostname.
        hostname="" if host_network else name,
        log_directory=str(log_dir),
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(namespace_options=options)
        ),
    )


def wait_exited(runtime: api_pb2_grpc.RuntimeServiceStub, container_id: str, timeout: float = 30) -> int:
    """Poll the container's status: the exit happens in another process, there is nothing to await."""
    deadline = time.monotonic() + timeout
    while True:
        status = runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container_id), timeout=10
        ).status
        if status.state == EXITED:
            return int(status.exit_code)
        if time.monotonic() > deadline:
            raise AssertionError(f"container {container_id} still {status.state} after {timeout}s")
        time.sleep(0.1)


@pytest.mark.parametrize("host_network", [True, False], ids=["hostNetwork", "podNetwork"])
def test_echo_container_runs_and_logs(
    containerd: Containerd, runtime: api_pb2_grpc.RuntimeServiceStub, tmp_path: Path, host_network: bool
) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    config = sandbox_config(log_dir, host_network)
    sandbox_id = runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
    try:
        status = runtime.PodSandboxStatus(
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=10
        ).status
        assert status.state == api_pb2.PodSandboxState.Value("SANDBOX_READY")
        if not host_network:
            assert status.network.ip, "a pod-network sandbox gets an address from the harness CNI"

        container_id = runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=sandbox_id,
                sandbox_config=config,
                config=api_pb2.ContainerConfig(
                    metadata=api_pb2.ContainerMetadata(name="echo"),
                    image=api_pb2.ImageSpec(image=BUSYBOX),
                    command=["echo", "hi"],
                    log_path="echo/0.log",
                ),
            ),
            timeout=60,
        ).container_id
        runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container_id), timeout=60)

        assert wait_exited(runtime, container_id) == 0
        log = (log_dir / "echo" / "0.log").read_text()
        assert "stdout F hi" in log, log

        runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=container_id), timeout=30)
    finally:
        runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
        runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=60)
    left = runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=10).items
    assert sandbox_id not in {sb.id for sb in left}
