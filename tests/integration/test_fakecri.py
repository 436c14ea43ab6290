"""Conformance of the fake CRI runtime (``integration/fakecri.py``) with the real containerd.

One conversation -- the CRI calls a node makes over a pod's life, and the wrong calls it can make --
is held with the harness's containerd and with the fake, and every answer is reduced to what a
client may rely on: which fields are set (the message's shape, recursively), the values that carry
meaning (states, exit codes, reasons, counts of filtered lists, whether an address was given) and,
for a failed call, the gRPC status code. The two transcripts must be equal, so the fake cannot
drift from the runtime it stands in for.

Left out, because only the real runtime can do them: pulling from a registry (the machine is
offline) and the streaming calls (Exec, Attach, PortForward), which the fake does not offer.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from integration.containerd import Containerd
from integration.fakecri import FakeRuntime
from integration.images import BUSYBOX

NODE_LABEL = "vnode.io/node"
# RFC 3339 with nanoseconds as Go prints them (time.RFC3339Nano): trailing zeros of the fraction
# are dropped, so 1 to 9 digits, or none at a whole second (a fixed 9 failed one run in ten).
CRI_LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z stdout F hello$")

# Fields the real runtime sets that carry nothing a node reads, or that depend on the machine.
IGNORED = {
    "StatusResponse.info",
    "ContainerStatusResponse.info",
    "PodSandboxStatusResponse.info",
    "ImageStatusResponse.info",
    "Image.repo_digests",  # the harness imports images without registry digests; pulls would have them
    "Image.uid",  # the harness's images have no configured user; a fake "root" would differ per image
    "Image.username",
    "ContainerStatus.resources",  # containerd echoes the cgroup resources the config asked for
    "ContainerStatus.user",
    "ContainerStatus.image_id",
    "Container.image_id",
    "ContainerStats.swap",
    "ContainerStats.io",
    "LinuxPodSandboxStats.network",
    "LinuxPodSandboxStats.process",
    "LinuxPodSandboxStats.io",
    "CpuUsage.psi",
    "MemoryUsage.psi",
    "MemoryUsage.available_bytes",
    "MemoryUsage.page_faults",
    "MemoryUsage.major_page_faults",
    # containerd stamps the writable layer's usage only once its background collection of snapshot
    # usage has run (present in one run, absent in the next); vnode reads the bytes and inodes only
    "FilesystemUsage.timestamp",
}


WRAPPERS = {"UInt64Value", "Int64Value"}


def shape(message: Any) -> Any:
    """The set fields of a message, recursively (repeated messages by their first element)."""
    result: dict[str, Any] = {}
    for desc, value in message.ListFields():
        key = f"{message.DESCRIPTOR.name}.{desc.name}"
        if key in IGNORED:
            continue
        if desc.message_type is not None and desc.message_type.name in WRAPPERS:
            result[desc.name] = "set"  # a wrapped number, present (its value may well be 0)
        elif desc.message_type is not None and desc.message_type.GetOptions().map_entry:
            result[desc.name] = "map"
        elif desc.message_type is not None and desc.is_repeated:
            result[desc.name] = [shape(value[0])] if value else []
        elif desc.message_type is not None:
            result[desc.name] = shape(value)
        else:
            result[desc.name] = "set"
    return result


class Conversation:
    """The calls, and the transcript of the reduced answers."""

    def __init__(self, channel: grpc.Channel, base: Path, node: str) -> None:
        self.rt = api_pb2_grpc.RuntimeServiceStub(channel)
        self.img = api_pb2_grpc.ImageServiceStub(channel)
        self.base = base
        self.node = node
        self.transcript: list[tuple[str, Any]] = []

    def call(
        self, step: str, method: Callable[..., Any], request: Any, **values: Callable[[Any], Any]
    ) -> Any:
        try:
            response = method(request, timeout=60)
        except grpc.RpcError as exc:
            self.transcript.append((step, ("error", exc.code().name)))
            return None
        self.transcript.append((step, shape(response)))
        for name, pick in values.items():
            self.transcript.append((f"{step}: {name}", pick(response)))
        return response

    def note(self, step: str, value: Any) -> None:
        self.transcript.append((step, value))

    def sandbox_config(self, name: str, host_network: bool) -> Any:
        log_dir = self.base / name
        log_dir.mkdir(parents=True, exist_ok=True)
        mode = api_pb2.NODE if host_network else api_pb2.POD
        return api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=name, namespace="default", uid=str(uuid.uuid4())),
            hostname="" if host_network else name,
            log_directory=str(log_dir),
            labels={NODE_LABEL: self.node, "io.kubernetes.pod.name": name},
            annotations={"note": name},
            linux=api_pb2.LinuxPodSandboxConfig(
                security_context=api_pb2.LinuxSandboxSecurityContext(
                    namespace_options=api_pb2.NamespaceOption(network=mode)
                )
            ),
        )

    def container_config(self, name: str, script: str, image: str = BUSYBOX) -> Any:
        return api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image=image),
            command=["sh", "-c", script],
            log_path=f"{name}/0.log",
            labels={NODE_LABEL: self.node, "container": name},
            annotations={"hash": name},
        )

    def wait_state(self, container_id: str, state: int, timeout: float = 30) -> None:
        """Poll: the container runs in another process, there is nothing to await."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.rt.ContainerStatus(
                api_pb2.ContainerStatusRequest(container_id=container_id), timeout=10
            ).status
            if status.state == state:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"container {container_id} still in state {status.state} after {timeout}s"
                )
            time.sleep(0.05)

    def wait_log(self, path: Path, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            if path.exists() and path.read_bytes().endswith(b"\n"):
                return path.read_bytes()
            if time.monotonic() > deadline:
                raise AssertionError(f"no complete log line in {path} after {timeout}s")
            time.sleep(0.05)


def state_of(response: Any) -> str:
    return str(api_pb2.ContainerState.Name(response.status.state))


def exit_of(response: Any) -> tuple[str, int, str]:
    s = response.status
    return api_pb2.ContainerState.Name(s.state), s.exit_code, s.reason


def converse(endpoint: str, base: Path) -> list[tuple[str, Any]]:
    node = f"conformance-{uuid.uuid4().hex[:6]}"
    with grpc.insecure_channel(endpoint) as channel:
        c = Conversation(channel, base, node)
        rt, img = c.rt, c.img
        mine = {NODE_LABEL: node}
        c.call("Version", rt.Version, api_pb2.VersionRequest(), api=lambda r: r.runtime_api_version)
        c.call(
            "Status",
            rt.Status,
            api_pb2.StatusRequest(),
            conditions=lambda r: sorted((x.type, x.status) for x in r.status.conditions),
        )
        c.call(
            "ImageStatus present",
            img.ImageStatus,
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=BUSYBOX)),
        )
        c.call(
            "ImageStatus absent",
            img.ImageStatus,
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image="example.invalid/nothing:1")),
        )
        c.call(
            "ListImages",
            img.ListImages,
            api_pb2.ListImagesRequest(),
            busybox=lambda r: any(BUSYBOX in i.repo_tags for i in r.images),
        )
        c.call("ImageFsInfo", img.ImageFsInfo, api_pb2.ImageFsInfoRequest())

        host = c.sandbox_config("host", host_network=True)
        hid = c.call(
            "RunPodSandbox host", rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=host)
        ).pod_sandbox_id
        c.call("RunPodSandbox again", rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=host))
        c.call(
            "PodSandboxStatus host",
            rt.PodSandboxStatus,
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=hid),
            state=lambda r: api_pb2.PodSandboxState.Name(r.status.state),
            ip=lambda r: bool(r.status.network.ip),
            labels=lambda r: {k: v.replace(node, "<node>") for k, v in r.status.labels.items()},
            annotations=lambda r: dict(r.status.annotations),
        )
        podnet = c.sandbox_config("podnet", host_network=False)
        pid = c.call(
            "RunPodSandbox podnet", rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=podnet)
        ).pod_sandbox_id
        c.call(
            "PodSandboxStatus podnet",
            rt.PodSandboxStatus,
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pid),
            ip=lambda r: bool(r.status.network.ip),
        )

        def create(name: str, script: str, sandbox_id: str, config: Any, image: str = BUSYBOX) -> str | None:
            response = c.call(
                f"CreateContainer {name}",
                rt.CreateContainer,
                api_pb2.CreateContainerRequest(
                    pod_sandbox_id=sandbox_id,
                    config=c.container_config(name, script, image),
                    sandbox_config=config,
                ),
            )
            return None if response is None else str(response.container_id)

        def status(step: str, cid: str, **values: Callable[[Any], Any]) -> Any:
            return c.call(
                step, rt.ContainerStatus, api_pb2.ContainerStatusRequest(container_id=cid), **values
            )

        server = create("server", "echo hello; sleep 3600", hid, host)
        assert server is not None
        create("server", "echo again", hid, host)  # the same name and attempt again
        status(
            "ContainerStatus created",
            server,
            state=exit_of,
            labels=lambda r: {k: v.replace(node, "<node>") for k, v in r.status.labels.items()},
            annotations=lambda r: dict(r.status.annotations),
            log_path=lambda r: r.status.log_path.endswith("server/0.log"),
            image=lambda r: r.status.image.image == BUSYBOX,
        )
        c.call("StartContainer", rt.StartContainer, api_pb2.StartContainerRequest(container_id=server))
        c.call("StartContainer again", rt.StartContainer, api_pb2.StartContainerRequest(container_id=server))
        status("ContainerStatus running", server, state=state_of)
        log = c.wait_log(c.base / "host" / "server" / "0.log")
        c.note("log in CRI format", [bool(CRI_LOG_LINE.match(line)) for line in log.splitlines()])

        failing = create("failing", "echo bye; exit 3", hid, host)
        done = create("done", "true", pid, podnet)
        assert failing is not None and done is not None
        for cid in (failing, done):
            rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid), timeout=60)
            c.wait_state(cid, api_pb2.CONTAINER_EXITED)
        status("ContainerStatus exit 3", failing, state=exit_of)
        status("ContainerStatus exit 0", done, state=exit_of)
        create("missing image", "true", hid, host, image="example.invalid/nothing:1")
        c.call(
            "CreateContainer no sandbox",
            rt.CreateContainer,
            api_pb2.CreateContainerRequest(
                pod_sandbox_id="0" * 64, config=c.container_config("x", "true"), sandbox_config=host
            ),
        )

        def containers(step: str, f: Any) -> None:
            c.call(
                step,
                rt.ListContainers,
                api_pb2.ListContainersRequest(filter=f),
                count=lambda r: len(r.containers),
            )

        containers("ListContainers mine", api_pb2.ContainerFilter(label_selector=mine))
        containers(
            "ListContainers running",
            api_pb2.ContainerFilter(
                label_selector=mine, state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)
            ),
        )
        containers(
            "ListContainers by sandbox", api_pb2.ContainerFilter(pod_sandbox_id=hid, label_selector=mine)
        )
        containers("ListContainers by id prefix", api_pb2.ContainerFilter(id=server[:12]))
        containers(
            "ListContainers by label", api_pb2.ContainerFilter(label_selector={**mine, "container": "done"})
        )

        def sandboxes(step: str, f: Any) -> None:
            c.call(
                step, rt.ListPodSandbox, api_pb2.ListPodSandboxRequest(filter=f), count=lambda r: len(r.items)
            )

        sandboxes("ListPodSandbox mine", api_pb2.PodSandboxFilter(label_selector=mine))
        sandboxes("ListPodSandbox by id", api_pb2.PodSandboxFilter(id=pid))
        sandboxes(
            "ListPodSandbox by label",
            api_pb2.PodSandboxFilter(label_selector={"io.kubernetes.pod.name": "podnet"}),
        )

        c.call(
            "ContainerStats",
            rt.ContainerStats,
            api_pb2.ContainerStatsRequest(container_id=server),
            working_set=lambda r: r.stats.memory.working_set_bytes.value > 0,
        )
        c.call(
            "ListContainerStats",
            rt.ListContainerStats,
            api_pb2.ListContainerStatsRequest(filter=api_pb2.ContainerStatsFilter(id=server)),
            count=lambda r: len(r.stats),
        )
        c.call(
            "ExecSync",
            rt.ExecSync,
            api_pb2.ExecSyncRequest(container_id=server, cmd=["echo", "hi"], timeout=10),
            out=lambda r: (bytes(r.stdout), r.exit_code),
        )

        c.call(
            "StopContainer",
            rt.StopContainer,
            api_pb2.StopContainerRequest(container_id=server, timeout=1),
        )
        status("ContainerStatus stopped", server, state=exit_of)
        c.call(
            "StopContainer again",
            rt.StopContainer,
            api_pb2.StopContainerRequest(container_id=server, timeout=1),
        )
        c.call("ExecSync stopped", rt.ExecSync, api_pb2.ExecSyncRequest(container_id=server, cmd=["true"]))

        restarted = create("server2", "sleep 3600", hid, host)
        assert restarted is not None
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=restarted), timeout=60)
        c.call("StopPodSandbox", rt.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=hid))
        c.call(
            "PodSandboxStatus stopped",
            rt.PodSandboxStatus,
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=hid),
            state=lambda r: api_pb2.PodSandboxState.Name(r.status.state),
        )
        status("ContainerStatus after StopPodSandbox", restarted, state=exit_of)
        c.call("RemoveContainer", rt.RemoveContainer, api_pb2.RemoveContainerRequest(container_id=server))
        status("ContainerStatus removed", server)
        c.call(
            "RemoveContainer again", rt.RemoveContainer, api_pb2.RemoveContainerRequest(container_id=server)
        )
        c.call("StopContainer removed", rt.StopContainer, api_pb2.StopContainerRequest(container_id=server))
        for sid, name in ((hid, "host"), (pid, "podnet")):
            c.call(
                f"StopPodSandbox {name}", rt.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=sid)
            )
            c.call(
                f"RemovePodSandbox {name}",
                rt.RemovePodSandbox,
                api_pb2.RemovePodSandboxRequest(pod_sandbox_id=sid),
            )
        c.call(
            "PodSandboxStatus removed",
            rt.PodSandboxStatus,
            api_pb2.PodSandboxStatusRequest(pod_sandbox_id=hid),
        )
        c.call(
            "RemovePodSandbox again", rt.RemovePodSandbox, api_pb2.RemovePodSandboxRequest(pod_sandbox_id=hid)
        )
        c.call("StopPodSandbox removed", rt.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=hid))
        c.call("RunPodSandbox after remove", rt.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=host))
        containers("ListContainers after remove", api_pb2.ContainerFilter(pod_sandbox_id=hid))
        sandboxes("ListPodSandbox after remove", api_pb2.PodSandboxFilter(label_selector=mine))
        return c.transcript


def test_fake_runtime_answers_as_containerd_does(
    containerd: Containerd, fake: FakeRuntime, tmp_path: Path
) -> None:
    real = converse(containerd.endpoint, tmp_path / "real")
    imitation = converse(fake.endpoint, tmp_path / "fake")
    assert [step for step, _ in imitation] == [step for step, _ in real]
    differences = [
        f"{step}:\n  containerd: {a!r}\n  fake:       {b!r}"
        for (step, a), (_, b) in zip(real, imitation, strict=True)
        if a != b
    ]
    assert not differences, "the fake runtime differs from containerd:\n" + "\n".join(differences)
