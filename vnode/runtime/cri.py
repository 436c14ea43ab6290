"""The CRI v1 client: containerd's RuntimeService and ImageService over grpc.aio.

This is the only module that sees gRPC. It gives the pod workers (``vnode.runtime.pods``) typed
calls with a deadline each, turns CRI messages into ``vnode.provider.types`` observations, and
translates ``grpc.aio.AioRpcError`` into vnode's error tree at this edge:

- UNAVAILABLE (socket missing, containerd restarting), DEADLINE_EXCEEDED -> ``Unavailable``
- NOT_FOUND -> ``NotFound``
- RESOURCE_EXHAUSTED (the streaming server's 1000 pending requests) -> ``TooMany``
- everything else -> ``RuntimeFailure`` carrying the runtime's own message.

The channel reconnects by itself when containerd comes back, so the client is created once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from vnode import errors
from vnode.provider.types import ContainerObservation, ContainerState, SandboxObservation
from vnode.runtime import labels

log = logging.getLogger(__name__)

_STATES = {
    api_pb2.CONTAINER_CREATED: ContainerState.CREATED,
    api_pb2.CONTAINER_RUNNING: ContainerState.RUNNING,
    api_pb2.CONTAINER_EXITED: ContainerState.EXITED,
    api_pb2.CONTAINER_UNKNOWN: ContainerState.UNKNOWN,
}


def from_unix_ns(value: int) -> datetime | None:
    """A CRI timestamp (nanoseconds since the epoch, 0 = unset) as an aware UTC datetime."""
    if value <= 0:
        return None
    return datetime.fromtimestamp(value / 1e9, tz=UTC)


def _translate(exc: grpc.aio.AioRpcError, what: str) -> errors.VnodeError:
    code = exc.code()
    detail = exc.details() or str(code)
    message = f"{what}: {detail}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return errors.Unavailable(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.TooMany(message)
    return errors.RuntimeFailure(message)


def observe_container(status: Any) -> ContainerObservation:
    """A CRI ``ContainerStatus`` (or ``Container`` from a list) as an observation."""
    annotations = status.annotations
    try:
        attempt = int(annotations.get(labels.CONTAINER_RESTART_COUNT, status.metadata.attempt))
    except ValueError:
        attempt = status.metadata.attempt
    return ContainerObservation(
        id=status.id,
        name=status.metadata.name,
        attempt=attempt,
        state=_STATES.get(status.state, ContainerState.UNKNOWN),
        created_at=from_unix_ns(status.created_at),
        started_at=from_unix_ns(getattr(status, "started_at", 0)),
        finished_at=from_unix_ns(getattr(status, "finished_at", 0)),
        exit_code=getattr(status, "exit_code", 0),
        reason=getattr(status, "reason", ""),
        message=getattr(status, "message", ""),
        image=status.image.image,
        image_ref=status.image_ref,
        log_path=getattr(status, "log_path", ""),
        spec_hash=annotations.get(labels.CONTAINER_HASH, ""),
        init=annotations.get(labels.CONTAINER_TYPE) == labels.TYPE_INIT,
    )


def observe_sandbox(status: Any) -> SandboxObservation:
    """A CRI ``PodSandboxStatus`` (or ``PodSandbox`` from a list) as an observation."""
    network = getattr(status, "network", None)
    ip = network.ip if network is not None else ""
    extra = tuple(a.ip for a in network.additional_ips) if network is not None else ()
    return SandboxObservation(
        id=status.id,
        ready=status.state == api_pb2.SANDBOX_READY,
        attempt=status.metadata.attempt,
        ip=ip,
        additional_ips=extra,
        created_at=from_unix_ns(status.created_at),
    )


class CriClient:
    """One connection to the runtime; every call has a deadline and raises vnode errors only."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 120.0,
        on_call: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        if not endpoint.startswith("unix://"):
            raise errors.InvalidInput(f"container runtime endpoint {endpoint!r} is not a unix:// URL")
        self.endpoint = endpoint
        self.runtime_version = ""  # as the last Version call answered (the Node's nodeInfo)
        self.timeout = timeout
        self.on_call = on_call  # (rpc name, seconds, failed) after every call: the node's metrics
        self._channel = grpc.aio.insecure_channel(
            endpoint,
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.enable_retries", 0),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._runtime = api_pb2_grpc.RuntimeServiceStub(self._channel)
        self._images = api_pb2_grpc.ImageServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any, what: str, timeout: float | None = None) -> Any:
        started = time.monotonic()
        failed = True
        try:
            result = await method(request, timeout=timeout if timeout is not None else self.timeout)
            failed = False
            return result
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, what) from exc
        finally:
            if self.on_call is not None:
                self.on_call(what.split(" ", 1)[0], time.monotonic() - started, failed)

    # -- runtime ----------------------------------------------------------------------------

    async def version(self) -> Any:
        """CRI Version; the answer is also kept as ``runtime_version`` (``containerd://1.6.20``)."""
        answer = await self._call(self._runtime.Version, api_pb2.VersionRequest(), "Version", timeout=10)
        self.runtime_version = f"{answer.runtime_name}://{answer.runtime_version}"
        return answer

    async def status(self) -> list[tuple[str, bool, str]]:
        """Runtime conditions as (type, ok, reason/message) triples (RuntimeReady, NetworkReady)."""
        resp = await self._call(self._runtime.Status, api_pb2.StatusRequest(), "Status", timeout=10)
        return [
            (c.type, c.status, f"{c.reason}: {c.message}" if c.message else c.reason)
            for c in resp.status.conditions
        ]

    async def sandbox_image(self) -> str | None:
        """The pause image the runtime runs sandboxes with (containerd: ``sandboxImage`` in the
        verbose status's config), None if it does not say."""
        resp = await self._call(
            self._runtime.Status, api_pb2.StatusRequest(verbose=True), "Status", timeout=10
        )
        try:
            config = json.loads(resp.info.get("config", "{}"))
        except ValueError:
            return None
        image = config.get("sandboxImage") if isinstance(config, dict) else None
        return str(image) if image else None

    async def run_pod_sandbox(self, config: Any) -> str:
        req = api_pb2.RunPodSandboxRequest(config=config)
        resp = await self._call(self._runtime.RunPodSandbox, req, "RunPodSandbox")
        return str(resp.pod_sandbox_id)

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        req = api_pb2.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        await self._call(self._runtime.StopPodSandbox, req, f"StopPodSandbox {sandbox_id[:12]}")

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        req = api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        await self._call(self._runtime.RemovePodSandbox, req, f"RemovePodSandbox {sandbox_id[:12]}")

    async def pod_sandbox_status(self, sandbox_id: str) -> SandboxObservation:
        req = api_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id)
        resp = await self._call(self._runtime.PodSandboxStatus, req, f"PodSandboxStatus {sandbox_id[:12]}")
        return observe_sandbox(resp.status)

    async def list_pod_sandboxes(self, selector: Mapping[str, str]) -> list[Any]:
        """Raw ``PodSandbox`` messages with these labels (their labels are needed to group them)."""
        req = api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(label_selector=dict(selector)))
        resp = await self._call(self._runtime.ListPodSandbox, req, "ListPodSandbox", timeout=30)
        return list(resp.items)

    async def create_container(self, sandbox_id: str, config: Any, sandbox_config: Any) -> str:
        req = api_pb2.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        resp = await self._call(self._runtime.CreateContainer, req, "CreateContainer")
        return str(resp.container_id)

    async def start_container(self, container_id: str) -> None:
        req = api_pb2.StartContainerRequest(container_id=container_id)
        await self._call(self._runtime.StartContainer, req, "StartContainer")

    async def stop_container(self, container_id: str, timeout: int) -> None:
        req = api_pb2.StopContainerRequest(container_id=container_id, timeout=timeout)
        # The RPC lasts as long as the grace period; give the deadline that much on top.
        await self._call(
            self._runtime.StopContainer, req, f"StopContainer {container_id[:12]}", self.timeout + timeout
        )

    async def remove_container(self, container_id: str) -> None:
        req = api_pb2.RemoveContainerRequest(container_id=container_id)
        await self._call(self._runtime.RemoveContainer, req, f"RemoveContainer {container_id[:12]}")

    async def list_containers(self, selector: Mapping[str, str]) -> list[Any]:
        """Raw ``Container`` messages with these labels."""
        req = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(label_selector=dict(selector)))
        resp = await self._call(self._runtime.ListContainers, req, "ListContainers", timeout=30)
        return list(resp.containers)

    async def container_status(self, container_id: str) -> ContainerObservation:
        req = api_pb2.ContainerStatusRequest(container_id=container_id)
        resp = await self._call(self._runtime.ContainerStatus, req, f"ContainerStatus {container_id[:12]}")
        return observe_container(resp.status)

    async def exec_sync(
        self, container_id: str, cmd: list[str], timeout: int = 0
    ) -> tuple[bytes, bytes, int]:
        req = api_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout)
        resp = await self._call(
            self._runtime.ExecSync, req, "ExecSync", (self.timeout + timeout) if timeout else None
        )
        return bytes(resp.stdout), bytes(resp.stderr), int(resp.exit_code)

    # -- streaming: each call returns a single-use URL on the runtime's own streaming server --

    async def exec_url(
        self, container_id: str, cmd: list[str], *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        req = api_pb2.ExecRequest(
            container_id=container_id, cmd=cmd, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr
        )
        resp = await self._call(self._runtime.Exec, req, f"Exec {container_id[:12]}", timeout=30)
        return str(resp.url)

    async def attach_url(
        self, container_id: str, *, tty: bool, stdin: bool, stdout: bool, stderr: bool
    ) -> str:
        req = api_pb2.AttachRequest(
            container_id=container_id, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr
        )
        resp = await self._call(self._runtime.Attach, req, f"Attach {container_id[:12]}", timeout=30)
        return str(resp.url)

    async def port_forward_url(self, sandbox_id: str, ports: list[int]) -> str:
        req = api_pb2.PortForwardRequest(pod_sandbox_id=sandbox_id, port=ports)
        resp = await self._call(self._runtime.PortForward, req, f"PortForward {sandbox_id[:12]}", timeout=30)
        return str(resp.url)

    # -- stats ------------------------------------------------------------------------------

    async def list_container_stats(self, selector: Mapping[str, str]) -> list[Any]:
        """Raw ``ContainerStats`` of the containers with these labels."""
        req = api_pb2.ListContainerStatsRequest(
            filter=api_pb2.ContainerStatsFilter(label_selector=dict(selector))
        )
        resp = await self._call(self._runtime.ListContainerStats, req, "ListContainerStats", timeout=30)
        return list(resp.stats)

    async def list_pod_sandbox_stats(self, selector: Mapping[str, str]) -> list[Any]:
        """Raw ``PodSandboxStats``; containerd fails the whole call when one sandbox has no usable
        cgroup (``RuntimeFailure``), and 1.5 or older answers Unimplemented."""
        req = api_pb2.ListPodSandboxStatsRequest(
            filter=api_pb2.PodSandboxStatsFilter(label_selector=dict(selector))
        )
        resp = await self._call(self._runtime.ListPodSandboxStats, req, "ListPodSandboxStats", timeout=30)
        return list(resp.stats)

    async def image_fs_info(self) -> list[Any]:
        """The image filesystems' ``FilesystemUsage`` (mountpoint, used bytes, inodes used)."""
        resp = await self._call(self._images.ImageFsInfo, api_pb2.ImageFsInfoRequest(), "ImageFsInfo", 30)
        return list(resp.image_filesystems)

    async def cgroup_driver(self) -> str | None:
        """``systemd`` or ``cgroupfs`` as the runtime says (CRI RuntimeConfig, containerd 2.0+);
        None when it cannot tell (older runtimes answer Unimplemented)."""
        try:
            resp = await self._call(
                self._runtime.RuntimeConfig, api_pb2.RuntimeConfigRequest(), "RuntimeConfig", 10
            )
        except errors.RuntimeFailure:
            return None
        if not resp.HasField("linux"):
            return None
        return "systemd" if resp.linux.cgroup_driver == api_pb2.SYSTEMD else "cgroupfs"

    # -- images -----------------------------------------------------------------------------

    async def image_ref(self, image: str) -> str | None:
        """The image ID (``sha256:...``) if the image is present, else None (CRI: empty reply)."""
        req = api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=image))
        resp = await self._call(self._images.ImageStatus, req, f"ImageStatus {image}", timeout=30)
        if not resp.HasField("image") or not resp.image.id:
            return None
        return str(resp.image.id)

    async def pull_image(self, image: str, auth: Mapping[str, str] | None = None) -> str:
        req = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=image))
        if auth:
            req.auth.CopyFrom(api_pb2.AuthConfig(**auth))
        resp = await self._call(self._images.PullImage, req, f"PullImage {image}")
        return str(resp.image_ref)

    async def list_images(self) -> list[Any]:
        """Raw ``Image`` messages (id, repo tags, repo digests, size)."""
        resp = await self._call(self._images.ListImages, api_pb2.ListImagesRequest(), "ListImages", 30)
        return list(resp.images)

    async def remove_image(self, image: str) -> None:
        req = api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=image))
        await self._call(self._images.RemoveImage, req, f"RemoveImage {image}")
