"""A fake container runtime that speaks CRI v1 over gRPC on a unix socket, for scale benchmarks.

It runs as its own process (``python -m integration.fakecri --socket PATH``), so vnode's gRPC path
is exercised exactly as it is against containerd, but a "container" costs a dict entry and a timer
instead of a shim, a runc and a cgroup: one machine can hold thousands of pods. It is a test and
benchmark tool, never a runtime option of vnode; ``tests/integration/test_fakecri.py`` runs the
same call sequences against it and against the harness's containerd and compares the answers, so
that its behaviour cannot drift from the real runtime's.

Semantics kept (containerd 1.6's, as the conformance test checks):

- sandboxes: READY after ``RunPodSandbox`` (a pod-network sandbox gets an address, a hostNetwork
  one none), NOTREADY after ``StopPodSandbox``, which kills their containers (exit 137); a sandbox
  or container name (metadata + attempt) is reserved while the object exists; Remove* is
  idempotent, Stop*/Status of an unknown ID is NOT_FOUND;
- containers: CREATED -> RUNNING -> EXITED; ``StartContainer`` twice is an error; a container
  runs a tiny interpretation of its command (``echo``, ``sleep N``, ``exit N``, ``;``/``&&``
  lists, e.g. busybox's ``sh -c "echo hi; sleep 3600"``): echoed lines go to its log file in the
  CRI format (``<RFC3339Nano> stdout F <line>``) under the sandbox's log directory, and it exits
  with the script's code when the script ends (reason Completed / Error); ``StopContainer``
  with a timeout sends SIGTERM, which ends it at once (exit 143; with the env
  ``FAKECRI_ON_TERM=ignore`` it is killed after the timeout instead, exit 137), a zero timeout
  kills it (exit 137);
- the ``List*`` filters (ID prefix, state, sandbox ID, label selector), labels and annotations
  kept verbatim, timestamps in nanoseconds;
- images: a preset list (the harness's busybox and pause), ``PullImage`` of any other reference
  succeeds with an ID derived from the name, unless the reference contains ``doesnotexist``
  (then it fails as a registry's 404 does); ``ImageStatus`` of an absent image is an empty reply;
  ``RemoveImage``, ``ListImages`` and ``ImageFsInfo``;
- stats: ``ContainerStats``/``ListContainerStats``/``PodSandboxStats``/``ListPodSandboxStats``
  with CPU time that grows while a container runs and a fixed working set.

Streaming (Exec, Attach, PortForward) is not offered (UNIMPLEMENTED): nothing at scale needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from integration.images import BUSYBOX, PAUSE

VERSION = "0.1.0"
PRESET_IMAGES = (BUSYBOX, PAUSE)
POD_UID = "io.kubernetes.pod.uid"  # kubelet's label; nodes list one pod's objects by it
WORKING_SET = 4 * 1024 * 1024  # bytes each running container reports
CPU_SHARE = 0.001  # of one core, what each running container reports using


def now_ns() -> int:
    return time.time_ns()


def cri_timestamp(ns: int) -> str:
    """RFC3339 with nanoseconds, as containerd writes at the start of each log line."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos:09d}Z"


def image_id(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass
class Step:
    """One step of a container's script: write lines, wait, or exit."""

    echo: str | None = None
    sleep: float = 0.0
    exit_code: int | None = None


def interpret(argv: list[str]) -> list[Step]:
    """The steps a command stands for: ``sh -c SCRIPT`` and bare ``echo``/``sleep``/``exit``/``true``.

    Anything else is taken to run until stopped (a server), which is what most images do.
    """
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash", "ash") and argv[1] == "-c":
        script = argv[2]
    elif argv:
        script = shlex.join(argv)
    else:
        return [Step(sleep=float("inf"))]
    steps: list[Step] = []
    for part in script.replace("&&", ";").replace("\n", ";").split(";"):
        try:
            words = shlex.split(part)
        except ValueError:
            words = part.split()
        if not words:
            continue
        cmd, args = Path(words[0]).name, words[1:]
        if cmd == "echo":
            steps.append(Step(echo=" ".join(a for a in args if a != "-n")))
        elif cmd == "sleep":
            try:
                steps.append(Step(sleep=float(args[0]) if args else 0.0))
            except ValueError:
                steps.append(Step(sleep=float("inf")))
        elif cmd == "exit":
            steps.append(Step(exit_code=int(args[0]) if args and args[0].isdigit() else 0))
            return steps
        elif cmd in ("true", ":"):
            continue
        elif cmd == "false":
            steps.append(Step(exit_code=1))
            return steps
        else:
            steps.append(Step(sleep=float("inf")))  # an unknown program: a long-running server
            return steps
    return steps


@dataclass
class Sandbox:
    id: str
    config: Any  # api_pb2.PodSandboxConfig
    created_at: int
    ip: str
    labels: dict[str, str]  # the config's, as a plain dict: protobuf maps are slow to filter
    state: int = api_pb2.SANDBOX_READY
    listed: Any = None  # the cached api_pb2.PodSandbox, rebuilt when the state changes
    containers: set[str] = field(default_factory=set)  # IDs of its containers

    @property
    def key(self) -> str:
        m = self.config.metadata
        return f"{m.name}_{m.namespace}_{m.uid}_{m.attempt}"


@dataclass
class Container:
    id: str
    sandbox_id: str
    config: Any  # api_pb2.ContainerConfig
    sandbox_config: Any
    image: str  # the name it was created from
    image_ref: str
    key: str
    labels: dict[str, str]
    log_path: str
    created_at: int
    state: int = api_pb2.CONTAINER_CREATED
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    task: asyncio.Task[None] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    listed: Any = None  # the cached api_pb2.Container, rebuilt when the state changes

    def env(self) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.config.envs}


class State:
    """Every sandbox, container and image; the single owner of the fake's state."""

    def __init__(self, images: Iterable[str]) -> None:
        self.sandboxes: dict[str, Sandbox] = {}
        self.containers: dict[str, Container] = {}
        self.images: dict[str, str] = {image_id(n): n for n in images}  # id -> name
        self.names: dict[str, str] = {}  # reserved sandbox/container key -> id
        self.next_ip = 2
        # Pod UID label -> IDs of the sandboxes and containers carrying it: a node lists each pod's
        # objects by that label, and scanning every object for each pod would make the fake, not
        # the node, the cost being measured.
        self.by_uid: dict[str, set[str]] = {}

    def index(self, ident: str, labels: Mapping[str, str]) -> None:
        if POD_UID in labels:
            self.by_uid.setdefault(labels[POD_UID], set()).add(ident)

    def unindex(self, ident: str, labels: Mapping[str, str]) -> None:
        ids = self.by_uid.get(labels.get(POD_UID, ""))
        if ids is not None:
            ids.discard(ident)
            if not ids:
                del self.by_uid[labels[POD_UID]]

    def candidates(self, table: Mapping[str, Any], selector: Mapping[str, str]) -> Iterable[Any]:
        """The objects of ``table`` that may match ``selector`` (all, unless it names a pod UID)."""
        if POD_UID in selector:
            ids = self.by_uid.get(selector[POD_UID], ())
            return [table[i] for i in ids if i in table]
        return table.values()

    # -- lookups --------------------------------------------------------------------------------

    def _find(
        self, table: Mapping[str, Any], ident: str, what: str, context: grpc.aio.ServicerContext
    ) -> Any:
        if ident in table:
            return table[ident]
        found = [v for k, v in table.items() if ident and k.startswith(ident)]
        if len(found) == 1:
            return found[0]
        raise Abort(
            grpc.StatusCode.NOT_FOUND, f"an error occurred when try to find {what} {ident!r}: not found"
        )

    def sandbox(self, ident: str, context: Any) -> Sandbox:
        result: Sandbox = self._find(self.sandboxes, ident, "sandbox", context)
        return result

    def container(self, ident: str, context: Any) -> Container:
        result: Container = self._find(self.containers, ident, "container", context)
        return result

    def resolve_image(self, ref: str) -> str | None:
        """The image ID ``ref`` (a name, an ID or a short name) stands for, if present."""
        if ref in self.images:
            return ref
        if f"sha256:{ref}" in self.images:
            return f"sha256:{ref}"
        full = ref if "/" in ref else f"docker.io/library/{ref}"
        if ":" not in full.rsplit("/", 1)[-1] and "@" not in full:
            full += ":latest"
        for ident, name in self.images.items():
            if name in (ref, full):
                return ident
        return None


class Abort(Exception):
    """An RPC's failure: the gRPC status code and message the client receives."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def rpc(method: Any) -> Any:
    """Turn ``Abort`` raised by a handler into the RPC's status."""

    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Abort as exc:
            await context.abort(exc.code, exc.message)

    handler.__name__ = method.__name__
    return handler


class Runtime(api_pb2_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    def __init__(self, state: State) -> None:
        self.s = state

    # -- runtime -------------------------------------------------------------------------------

    @rpc
    async def Version(self, request: Any, context: Any) -> Any:
        return api_pb2.VersionResponse(
            version="0.1.0", runtime_name="fakecri", runtime_version=VERSION, runtime_api_version="v1"
        )

    @rpc
    async def Status(self, request: Any, context: Any) -> Any:
        return api_pb2.StatusResponse(
            status=api_pb2.RuntimeStatus(
                conditions=[
                    api_pb2.RuntimeCondition(type="RuntimeReady", status=True),
                    api_pb2.RuntimeCondition(type="NetworkReady", status=True),
                ]
            )
        )

    @rpc
    async def UpdateRuntimeConfig(self, request: Any, context: Any) -> Any:
        return api_pb2.UpdateRuntimeConfigResponse()

    # -- sandboxes -----------------------------------------------------------------------------

    @rpc
    async def RunPodSandbox(self, request: Any, context: Any) -> Any:
        config = request.config
        sandbox = Sandbox(
            id=secrets.token_hex(32), config=config, created_at=now_ns(), ip="", labels=dict(config.labels)
        )
        if sandbox.key in self.s.names:
            raise Abort(
                grpc.StatusCode.UNKNOWN,
                f"failed to reserve sandbox name {sandbox.key!r}: name {sandbox.key!r} is reserved "
                f"for {self.s.names[sandbox.key]!r}",
            )
        options = config.linux.security_context.namespace_options
        if options.network != api_pb2.NODE:
            n = self.s.next_ip
            self.s.next_ip += 1
            sandbox.ip = f"10.{88 + n // 65536 % 8}.{n // 256 % 256}.{n % 256}"
        self.s.names[sandbox.key] = sandbox.id
        self.s.sandboxes[sandbox.id] = sandbox
        self.s.index(sandbox.id, sandbox.labels)
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox.id)

    @rpc
    async def StopPodSandbox(self, request: Any, context: Any) -> Any:
        sandbox = self.s.sandbox(request.pod_sandbox_id, context)
        for cid in list(sandbox.containers):
            await kill(self.s.containers[cid], 0)
        sandbox.state, sandbox.listed = api_pb2.SANDBOX_NOTREADY, None
        return api_pb2.StopPodSandboxResponse()

    @rpc
    async def RemovePodSandbox(self, request: Any, context: Any) -> Any:
        try:
            sandbox = self.s.sandbox(request.pod_sandbox_id, context)
        except Abort:
            return api_pb2.RemovePodSandboxResponse()  # idempotent, as containerd
        for cid in list(sandbox.containers):
            c = self.s.containers[cid]
            await kill(c, 0)
            self._forget(c)
        sandbox.state, sandbox.listed = api_pb2.SANDBOX_NOTREADY, None
        self.s.names.pop(sandbox.key, None)
        self.s.unindex(sandbox.id, sandbox.labels)
        del self.s.sandboxes[sandbox.id]
        return api_pb2.RemovePodSandboxResponse()

    def _sandbox_status(self, sandbox: Sandbox) -> Any:
        config = sandbox.config
        return api_pb2.PodSandboxStatus(
            id=sandbox.id,
            metadata=config.metadata,
            state=cast(Any, sandbox.state),  # an int: the stubs want the enum's NewType
            created_at=sandbox.created_at,
            network=api_pb2.PodSandboxNetworkStatus(ip=sandbox.ip),
            linux=api_pb2.LinuxPodSandboxStatus(
                namespaces=api_pb2.Namespace(options=config.linux.security_context.namespace_options)
            ),
            labels=config.labels,
            annotations=config.annotations,
        )

    @rpc
    async def PodSandboxStatus(self, request: Any, context: Any) -> Any:
        sandbox = self.s.sandbox(request.pod_sandbox_id, context)
        response = api_pb2.PodSandboxStatusResponse(status=self._sandbox_status(sandbox))
        if request.verbose:
            response.info["info"] = '{"fakecri": true}'
        return response

    @rpc
    async def ListPodSandbox(self, request: Any, context: Any) -> Any:
        f = request.filter
        selector = dict(f.label_selector)
        items = []
        for sandbox in self.s.candidates(self.s.sandboxes, selector):
            if f.id and not sandbox.id.startswith(f.id):
                continue
            if f.HasField("state") and sandbox.state != f.state.state:
                continue
            if not matches(sandbox.labels, selector):
                continue
            if sandbox.listed is None:
                sandbox.listed = api_pb2.PodSandbox(
                    id=sandbox.id,
                    metadata=sandbox.config.metadata,
                    state=sandbox.state,
                    created_at=sandbox.created_at,
                    labels=sandbox.config.labels,
                    annotations=sandbox.config.annotations,
                )
            items.append(sandbox.listed)
        return api_pb2.ListPodSandboxResponse(items=items)

    # -- containers ----------------------------------------------------------------------------

    @rpc
    async def CreateContainer(self, request: Any, context: Any) -> Any:
        sandbox = self.s.sandbox(request.pod_sandbox_id, context)
        config = request.config
        ident = self.s.resolve_image(config.image.image)
        if ident is None:
            raise Abort(
                grpc.StatusCode.NOT_FOUND,
                f"failed to create containerd container: failed to get image {config.image.image!r}: "
                "not found",
            )
        m, pm = config.metadata, sandbox.config.metadata
        key = f"{m.name}_{pm.name}_{pm.namespace}_{pm.uid}_{m.attempt}"
        if key in self.s.names:
            raise Abort(
                grpc.StatusCode.UNKNOWN,
                f"failed to reserve container name {key!r}: name {key!r} is reserved for "
                f"{self.s.names[key]!r}",
            )
        log_path = ""
        if config.log_path and sandbox.config.log_directory:
            log_path = os.path.join(sandbox.config.log_directory, config.log_path)
        container = Container(
            id=secrets.token_hex(32),
            sandbox_id=sandbox.id,
            config=config,
            sandbox_config=request.sandbox_config,
            image=self.s.images[ident],
            image_ref=ident,
            key=key,
            labels=dict(config.labels),
            log_path=log_path,
            created_at=now_ns(),
        )
        self.s.names[key] = container.id
        self.s.containers[container.id] = container
        self.s.index(container.id, container.labels)
        sandbox.containers.add(container.id)
        return api_pb2.CreateContainerResponse(container_id=container.id)

    @rpc
    async def StartContainer(self, request: Any, context: Any) -> Any:
        c = self.s.container(request.container_id, context)
        if c.state != api_pb2.CONTAINER_CREATED:
            raise Abort(grpc.StatusCode.UNKNOWN, f"container is in {_state_name(c.state)} state")
        if self.s.sandboxes[c.sandbox_id].state != api_pb2.SANDBOX_READY:
            raise Abort(grpc.StatusCode.UNKNOWN, f"sandbox container {c.sandbox_id!r} is not running")
        if c.log_path:
            try:
                Path(c.log_path).parent.mkdir(parents=True, exist_ok=True)
                Path(c.log_path).touch()
            except OSError as exc:
                raise Abort(
                    grpc.StatusCode.UNKNOWN, f"failed to create container log {c.log_path}: {exc}"
                ) from exc
        c.state, c.started_at, c.listed = api_pb2.CONTAINER_RUNNING, now_ns(), None
        steps = interpret(list(c.config.command) + list(c.config.args))
        c.task = asyncio.get_running_loop().create_task(run_script(c, steps), name=f"container:{c.id[:12]}")
        return api_pb2.StartContainerResponse()

    @rpc
    async def StopContainer(self, request: Any, context: Any) -> Any:
        c = self.s.container(request.container_id, context)
        await kill(c, request.timeout)
        return api_pb2.StopContainerResponse()

    @rpc
    async def RemoveContainer(self, request: Any, context: Any) -> Any:
        try:
            c = self.s.container(request.container_id, context)
        except Abort:
            return api_pb2.RemoveContainerResponse()  # idempotent, as containerd
        await kill(c, 0)
        self._forget(c)
        return api_pb2.RemoveContainerResponse()

    def _forget(self, c: Container) -> None:
        self.s.names.pop(c.key, None)
        self.s.unindex(c.id, c.labels)
        self.s.containers.pop(c.id, None)
        sandbox = self.s.sandboxes.get(c.sandbox_id)
        if sandbox is not None:
            sandbox.containers.discard(c.id)

    @rpc
    async def ContainerStatus(self, request: Any, context: Any) -> Any:
        c = self.s.container(request.container_id, context)
        config = c.config
        status = api_pb2.ContainerStatus(
            id=c.id,
            metadata=config.metadata,
            state=cast(Any, c.state),
            created_at=c.created_at,
            started_at=c.started_at,
            finished_at=c.finished_at,
            exit_code=c.exit_code,
            image=api_pb2.ImageSpec(image=c.image),
            image_ref=c.image_ref,
            reason=c.reason,
            labels=config.labels,
            annotations=config.annotations,
            mounts=config.mounts,
            log_path=c.log_path,
        )
        response = api_pb2.ContainerStatusResponse(status=status)
        if request.verbose:
            response.info["info"] = '{"fakecri": true}'
        return response

    @rpc
    async def ListContainers(self, request: Any, context: Any) -> Any:
        f = request.filter
        selector = dict(f.label_selector)
        found = []
        for c in self.s.candidates(self.s.containers, selector):
            if f.id and not c.id.startswith(f.id):
                continue
            if f.pod_sandbox_id and not c.sandbox_id.startswith(f.pod_sandbox_id):
                continue
            if f.HasField("state") and c.state != f.state.state:
                continue
            if not matches(c.labels, selector):
                continue
            if c.listed is None:
                c.listed = api_pb2.Container(
                    id=c.id,
                    pod_sandbox_id=c.sandbox_id,
                    metadata=c.config.metadata,
                    image=api_pb2.ImageSpec(image=c.image),
                    image_ref=c.image_ref,
                    state=c.state,
                    created_at=c.created_at,
                    labels=c.config.labels,
                    annotations=c.config.annotations,
                )
            found.append(c.listed)
        return api_pb2.ListContainersResponse(containers=found)

    @rpc
    async def UpdateContainerResources(self, request: Any, context: Any) -> Any:
        self.s.container(request.container_id, context)
        return api_pb2.UpdateContainerResourcesResponse()

    @rpc
    async def ReopenContainerLog(self, request: Any, context: Any) -> Any:
        c = self.s.container(request.container_id, context)
        if c.state != api_pb2.CONTAINER_RUNNING:
            raise Abort(grpc.StatusCode.UNKNOWN, "container is not running")
        if c.log_path:
            Path(c.log_path).touch()
        return api_pb2.ReopenContainerLogResponse()

    @rpc
    async def ExecSync(self, request: Any, context: Any) -> Any:
        c = self.s.container(request.container_id, context)
        if c.state != api_pb2.CONTAINER_RUNNING:
            raise Abort(grpc.StatusCode.UNKNOWN, f"container is in {_state_name(c.state)} state")
        out, code = [], 0
        for step in interpret(list(request.cmd)):
            if step.echo is not None:
                out.append(step.echo + "\n")
            if step.exit_code is not None:
                code = step.exit_code
        return api_pb2.ExecSyncResponse(stdout="".join(out).encode(), exit_code=code)

    # -- stats ---------------------------------------------------------------------------------

    def _stats(self, c: Container) -> Any:
        ts = now_ns()
        end = c.finished_at or ts
        cpu = int((end - c.started_at) * CPU_SHARE) if c.started_at else 0
        running = c.state == api_pb2.CONTAINER_RUNNING
        log_size = 0
        if c.log_path:
            with contextlib.suppress(OSError):
                log_size = os.path.getsize(c.log_path)
        return api_pb2.ContainerStats(
            attributes=api_pb2.ContainerAttributes(
                id=c.id, metadata=c.config.metadata, labels=c.config.labels, annotations=c.config.annotations
            ),
            cpu=api_pb2.CpuUsage(
                timestamp=ts,
                usage_core_nano_seconds=api_pb2.UInt64Value(value=cpu),
                usage_nano_cores=api_pb2.UInt64Value(value=int(1e9 * CPU_SHARE) if running else 0),
            ),
            memory=api_pb2.MemoryUsage(
                timestamp=ts,
                working_set_bytes=api_pb2.UInt64Value(value=WORKING_SET if running else 0),
                usage_bytes=api_pb2.UInt64Value(value=WORKING_SET if running else 0),
                rss_bytes=api_pb2.UInt64Value(value=WORKING_SET // 2 if running else 0),
            ),
            writable_layer=api_pb2.FilesystemUsage(
                fs_id=api_pb2.FilesystemIdentifier(mountpoint="/var/lib/fakecri"),
                used_bytes=api_pb2.UInt64Value(value=log_size),
                inodes_used=api_pb2.UInt64Value(value=1),
            ),
        )

    def _selected(self, f: Any) -> list[Container]:
        selector = dict(f.label_selector)
        return [
            c
            for c in self.s.candidates(self.s.containers, selector)
            if (not f.id or c.id.startswith(f.id))
            and (not f.pod_sandbox_id or c.sandbox_id.startswith(f.pod_sandbox_id))
            and matches(c.labels, selector)
        ]

    @rpc
    async def ContainerStats(self, request: Any, context: Any) -> Any:
        c = self.s.container(request.container_id, context)
        return api_pb2.ContainerStatsResponse(stats=self._stats(c))

    @rpc
    async def ListContainerStats(self, request: Any, context: Any) -> Any:
        return api_pb2.ListContainerStatsResponse(
            stats=[self._stats(c) for c in self._selected(request.filter)]
        )

    def _sandbox_stats(self, sandbox: Sandbox) -> Any:
        containers = [self._stats(self.s.containers[cid]) for cid in sandbox.containers]
        ts = now_ns()
        cpu = sum(s.cpu.usage_core_nano_seconds.value for s in containers)
        memory = sum(s.memory.working_set_bytes.value for s in containers)
        return api_pb2.PodSandboxStats(
            attributes=api_pb2.PodSandboxAttributes(
                id=sandbox.id,
                metadata=sandbox.config.metadata,
                labels=sandbox.config.labels,
                annotations=sandbox.config.annotations,
            ),
            linux=api_pb2.LinuxPodSandboxStats(
                cpu=api_pb2.CpuUsage(timestamp=ts, usage_core_nano_seconds=api_pb2.UInt64Value(value=cpu)),
                memory=api_pb2.MemoryUsage(timestamp=ts, working_set_bytes=api_pb2.UInt64Value(value=memory)),
                containers=containers,
            ),
        )

    @rpc
    async def PodSandboxStats(self, request: Any, context: Any) -> Any:
        sandbox = self.s.sandbox(request.pod_sandbox_id, context)
        return api_pb2.PodSandboxStatsResponse(stats=self._sandbox_stats(sandbox))

    @rpc
    async def ListPodSandboxStats(self, request: Any, context: Any) -> Any:
        f = request.filter
        selector = dict(f.label_selector)
        chosen = [
            s
            for s in self.s.candidates(self.s.sandboxes, selector)
            if (not f.id or s.id.startswith(f.id)) and matches(s.labels, selector)
        ]
        return api_pb2.ListPodSandboxStatsResponse(stats=[self._sandbox_stats(s) for s in chosen])


async def run_script(c: Container, steps: list[Step]) -> None:
    """Play a container's steps: its echoes go to its log, its end is its exit."""
    code = 0
    for step in steps:
        if step.echo is not None:
            write_log(c, step.echo)
        if step.sleep:
            try:
                if step.sleep == float("inf"):
                    await c.stopping.wait()
                else:
                    await asyncio.wait_for(c.stopping.wait(), step.sleep)
            except TimeoutError:
                continue
            return  # stopped: kill() records the exit
        if step.exit_code is not None:
            code = step.exit_code
            break
    finish(c, code)


def write_log(c: Container, line: str) -> None:
    if not c.log_path:
        return
    with contextlib.suppress(OSError), open(c.log_path, "a") as f:
        f.write(f"{cri_timestamp(now_ns())} stdout F {line}\n")


def finish(c: Container, code: int) -> None:
    if c.state != api_pb2.CONTAINER_RUNNING:
        return
    c.state, c.finished_at, c.exit_code, c.listed = api_pb2.CONTAINER_EXITED, now_ns(), code, None
    c.reason = "Completed" if code == 0 else "Error"


async def kill(c: Container, timeout: int) -> None:
    """StopContainer: SIGKILL at once for a zero timeout (exit 137); else SIGTERM, which ends the
    container at once (exit 143) unless its env says ``FAKECRI_ON_TERM=ignore``: then SIGKILL
    after ``timeout`` unless its script ends first."""
    if c.state != api_pb2.CONTAINER_RUNNING:
        return  # a created container stays created (it can't be started any more), as containerd's
    if timeout > 0 and c.env().get("FAKECRI_ON_TERM") != "ignore":
        c.stopping.set()
        finish(c, 143)
        return
    if timeout > 0 and c.task is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(c.task), timeout)
    c.stopping.set()
    finish(c, 137)


class Images(api_pb2_grpc.ImageServiceServicer):  # type: ignore[misc]
    def __init__(self, state: State) -> None:
        self.s = state

    def _image(self, ident: str) -> Any:
        name = self.s.images[ident]
        return api_pb2.Image(
            id=ident,
            repo_tags=[name],
            size=1024 * 1024,
            pinned=name == PAUSE,
        )

    @rpc
    async def ListImages(self, request: Any, context: Any) -> Any:
        wanted = request.filter.image.image
        chosen = [i for i in self.s.images if not wanted or i == self.s.resolve_image(wanted)]
        return api_pb2.ListImagesResponse(images=[self._image(i) for i in chosen])

    @rpc
    async def ImageStatus(self, request: Any, context: Any) -> Any:
        ident = self.s.resolve_image(request.image.image)
        if ident is None:
            return api_pb2.ImageStatusResponse()
        return api_pb2.ImageStatusResponse(image=self._image(ident))

    @rpc
    async def PullImage(self, request: Any, context: Any) -> Any:
        ref = request.image.image
        if "doesnotexist" in ref:
            raise Abort(
                grpc.StatusCode.NOT_FOUND,
                f"failed to pull and unpack image {ref!r}: failed to resolve reference {ref!r}: not found",
            )
        ident = self.s.resolve_image(ref)
        if ident is None:
            full = ref if "/" in ref else f"docker.io/library/{ref}"
            if ":" not in full.rsplit("/", 1)[-1]:
                full += ":latest"
            ident = image_id(full)
            self.s.images[ident] = full
        return api_pb2.PullImageResponse(image_ref=ident)

    @rpc
    async def RemoveImage(self, request: Any, context: Any) -> Any:
        ident = self.s.resolve_image(request.image.image)
        if ident is not None:
            if any(c.image_ref == ident for c in self.s.containers.values()):
                raise Abort(grpc.StatusCode.UNKNOWN, f"image {ident!r} is in use by a container")
            del self.s.images[ident]
        return api_pb2.RemoveImageResponse()

    @rpc
    async def ImageFsInfo(self, request: Any, context: Any) -> Any:
        ts = now_ns()
        usage = api_pb2.FilesystemUsage(
            timestamp=ts,
            fs_id=api_pb2.FilesystemIdentifier(mountpoint="/var/lib/fakecri/images"),
            used_bytes=api_pb2.UInt64Value(value=len(self.s.images) * 1024 * 1024),
            inodes_used=api_pb2.UInt64Value(value=len(self.s.images)),
        )
        return api_pb2.ImageFsInfoResponse(image_filesystems=[usage])


async def serve(socket_path: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    state = State(PRESET_IMAGES)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(Runtime(state), server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(Images(state), server)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server.add_insecure_port(f"unix://{socket_path}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)
    for c in state.containers.values():
        if c.task is not None:
            c.task.cancel()


class FakeRuntime:
    """The fake as a subprocess, started and stopped like the harness's ``Containerd``."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = Path(base or tempfile.mkdtemp(prefix="vnode-fakecri-"))
        self.address = str(self.base / "fakecri.sock")
        self.log_file = self.base / "fakecri.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.address}"

    def start(self, timeout: float = 30.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "integration.fakecri", "--socket", self.address],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:  # another process: poll Version until it answers
            if self.proc.poll() is not None:
                raise RuntimeError(f"fakecri exited with {self.proc.returncode}: {self.log_file.read_text()}")
            try:
                with grpc.insecure_channel(self.endpoint) as channel:
                    api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest(), timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def running_containers(self) -> dict[str, list[str]]:
        """IDs of the running containers, by the ``io.kubernetes.pod.name`` label of their pod."""
        with grpc.insecure_channel(self.endpoint) as channel:
            runtime = api_pb2_grpc.RuntimeServiceStub(channel)
            running = api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)
            request = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(state=running))
            found: dict[str, list[str]] = {}
            for c in runtime.ListContainers(request, timeout=30).containers:
                found.setdefault(c.labels.get("io.kubernetes.pod.name", ""), []).append(c.id)
            return found

    def counts(self) -> tuple[int, int]:
        """(sandboxes, containers) the runtime holds."""
        with grpc.insecure_channel(self.endpoint) as channel:
            runtime = api_pb2_grpc.RuntimeServiceStub(channel)
            sandboxes = runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items
            containers = runtime.ListContainers(api_pb2.ListContainersRequest(), timeout=30).containers
            return len(sandboxes), len(containers)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="A fake CRI v1 runtime on a unix socket (tests, benchmarks)."
    )
    parser.add_argument("--socket", required=True, help="path of the unix socket to serve on")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.socket))


if __name__ == "__main__":
    main()


def _state_name(state: int) -> str:
    """A container state's CRI name (CONTAINER_RUNNING ...), for an error message."""
    return str(api_pb2.ContainerState.Name(cast(Any, state)))
