"""Starting one pod's sandbox and containers: whether a start may happen now, and the start itself.

The worker (``vnode.runtime.worker``) decides *what* its pod needs next from an observation (a new
sandbox, which init container runs, which container must run again); this module owns *how* one
start goes and when it must wait instead: the sandbox's attempt numbering and back-off, image
pulls per imagePullPolicy with their back-off, the crash-loop back-off between a container's
instances, taking over a start an earlier vnode process cut short, the CreateContainer and
StartContainer calls, and the waiting reason (with its Event, said once) when any of it fails.
It is separate because these rules (kubelet's ``SyncPod`` start half and its back-off keys) change
together and apart from the worker's loop, deletion and status.

What the starts reached is ``Progress``: the attempt numbers, which the worker persists, and the
waiting reasons, which it publishes in the pod's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vnode import errors
from vnode.kube import images
from vnode.provider.types import ContainerObservation, ContainerState, SandboxObservation, Waiting
from vnode.runtime import apiobjects, labels, specs
from vnode.runtime.cgroups import pod_cgroup_parent
from vnode.runtime.context import WorkerContext
from vnode.runtime.observation import Observed
from vnode.runtime.podfiles import PodFiles

log = logging.getLogger(__name__)

KEEP_INSTANCES = 2  # per container name: the current one and the one lastState reports
SANDBOX_KEY = "<sandbox>"  # the crash back-off's key (after the pod's UID) for sandbox creation


@dataclass
class Progress:
    """How far a pod's starts got: the attempt numbers (persisted in the pod's state) and why
    containers wait (published in its status)."""

    attempts: dict[str, int] = field(default_factory=dict)  # container name -> last attempt started
    sandbox_attempt: int = -1
    waiting: dict[str, Waiting] = field(default_factory=dict)


def pod_name(pod: dict[str, Any]) -> str:
    return f"{pod['metadata'].get('namespace', 'default')}/{pod['metadata']['name']}"


class Starter:
    """Starts one pod's sandbox and containers; see the module docstring.

    ``schedule(seconds)`` asks the worker to sync again within that time (a back-off's end);
    ``persist()`` writes the pod's state, of which ``progress`` is part.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        uid: str,
        files: PodFiles,
        progress: Progress,
        *,
        schedule: Callable[[float], None],
        persist: Callable[[], Awaitable[None]],
    ) -> None:
        self.ctx = ctx
        self.uid = uid
        self.progress = progress
        self._files = files
        self._schedule = schedule
        self._persist = persist
        self._handled: set[str] = set()  # containers this process created or took over

    # -- the sandbox -------------------------------------------------------------------------

    async def create_sandbox(self, pod: dict[str, Any], observed: Observed) -> SandboxObservation | None:
        """Run a new sandbox for the pod; None (with a waiting reason and a retry) if that failed.

        Its attempt follows the newest the runtime has, as kubelet numbers them, not only the one
        this worker remembers: a sandbox whose creation a SIGKILL cut short still holds the name
        of its attempt in the runtime, and reusing that number fails ("name is reserved") forever.
        """
        ctx, progress = self.ctx, self.progress
        key = f"{self.uid}/{SANDBOX_KEY}"
        remaining = ctx.crash_backoff.remaining(key, None, ctx.now())
        if remaining > 0 and progress.sandbox_attempt >= 0:
            self._schedule(remaining)
            return None
        attempt = max([progress.sandbox_attempt, *(s.attempt for s in observed.sandboxes)]) + 1
        try:
            files = await self._files.volume_files(pod, await self._files.objects(pod), None)
            await asyncio.to_thread(ctx.volumes.prepare, pod, files)
        except errors.VnodeError as exc:
            self._set_all_waiting(pod, "ContainerCreating", str(exc))
            ctx.events.event(pod, "Warning", "FailedMount", str(exc))
            self._schedule(ctx.crash_backoff.next_delay(key, ctx.now()))
            return None
        log_dir = specs.pod_log_dir(ctx.logs_dir, pod)
        await asyncio.to_thread(make_dirs, log_dir)
        config = await self.sandbox_config(pod, attempt)
        try:
            sandbox_id = await ctx.cri.run_pod_sandbox(config)
        except (errors.RuntimeFailure, errors.NotFound) as exc:
            message = f"Failed to create pod sandbox: {exc}"
            self._set_all_waiting(pod, "ContainerCreating", message)
            ctx.events.event(pod, "Warning", "FailedCreatePodSandBox", message)
            self._schedule(ctx.crash_backoff.next_delay(key, ctx.now()))
            return None
        log.info("pod %s: sandbox %s started (attempt %d)", pod_name(pod), sandbox_id[:12], attempt)
        progress.sandbox_attempt = attempt
        ctx.crash_backoff.reset(key)
        progress.waiting.clear()
        _, status = await asyncio.gather(self._persist(), ctx.cri.pod_sandbox_status(sandbox_id))
        return status

    async def sandbox_config(self, pod: dict[str, Any], attempt: int) -> Any:
        """The sandbox's config as created: node label, and the pod cgroup under its QoS class."""
        ctx = self.ctx
        log_dir = specs.pod_log_dir(ctx.logs_dir, pod)
        config = specs.sandbox_config(pod, log_dir=log_dir, attempt=attempt, dns=ctx.dns)
        config.labels[labels.NODE_LABEL] = ctx.node_name
        if ctx.cgroups is not None:
            config.linux.cgroup_parent = pod_cgroup_parent(pod, await ctx.cgroups.get())
        return config

    # -- containers --------------------------------------------------------------------------

    async def start_or_back_off(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        kind: str,
        observed: Observed,
        sandbox: SandboxObservation,
    ) -> bool:
        """Start a new instance of ``container`` unless its crash-loop back-off says wait."""
        ctx, waiting = self.ctx, self.progress.waiting
        name = container["name"]
        key = f"{self.uid}/{name}"
        instances = observed.containers.get(name, [])
        previous = instances[0] if instances else None
        if previous is not None and self._start_cut_short(previous, observed):
            return await self._take_over(pod, previous, container, kind, observed, sandbox)
        if previous is not None and previous.state == ContainerState.EXITED and previous.finished_at:
            remaining = ctx.crash_backoff.remaining(key, previous.finished_at, ctx.now())
            if remaining > 0:
                delay = ctx.crash_backoff.current_delay(key)
                message = (
                    f"back-off {go_duration(delay)} restarting failed container={name} "
                    f"pod={pod['metadata']['name']}_{pod['metadata'].get('namespace', 'default')}"
                    f"({self.uid})"
                )
                if waiting.get(name) != Waiting("CrashLoopBackOff", message):
                    text = f"Back-off restarting failed container {name}"
                    ctx.events.event(pod, "Warning", "BackOff", text)
                waiting[name] = Waiting("CrashLoopBackOff", message)
                self._schedule(remaining)
                return False
        started = await self._start_container(pod, container, kind, observed, sandbox)
        if previous is not None:
            ctx.crash_backoff.next_delay(key, ctx.now())
            await self._persist()
        await self._prune(name, observed)
        return started

    def _start_cut_short(self, instance: ContainerObservation, observed: Observed) -> bool:
        """Whether ``instance`` is one an earlier vnode process created and never saw started: the
        newest of its name in the current sandbox, never run, and not handled by this process."""
        return (
            instance is observed.current(instance.name)
            and instance.started_at is None
            and instance.state in (ContainerState.CREATED, ContainerState.EXITED)
            and instance.id not in self._handled
        )

    async def _take_over(
        self,
        pod: dict[str, Any],
        instance: ContainerObservation,
        container: dict[str, Any],
        kind: str,
        observed: Observed,
        sandbox: SandboxObservation,
    ) -> bool:
        """Finish a start that vnode's own end cut short, without counting a restart.

        A container still CREATED is started: it is the same instance, so the application starts
        once. One the runtime already marked exited (containerd fails the start when the caller
        goes: ``StartError``, ``context canceled``) never ran: it is removed and a new one is
        created under the same attempt number, so restartCount says what really happened.
        """
        name = instance.name
        if instance.state == ContainerState.CREATED:
            try:
                await self.ctx.cri.start_container(instance.id)
            except errors.NotFound:
                pass
            else:
                self._handled.add(instance.id)
                log.info("pod %s: started container %s left created by an earlier run", pod_name(pod), name)
                self.progress.attempts[name] = instance.attempt
                self.progress.waiting.pop(name, None)
                self.ctx.events.event(pod, "Normal", "Started", f"Started container {name}")
                return True
        # Raises while the runtime is still starting it: the sync is retried with back-off.
        await ignore_missing(self.ctx.cri.remove_container(instance.id))
        self._handled.add(instance.id)
        log.info("pod %s: replacing container %s, whose start an earlier run cut short", pod_name(pod), name)
        remaining = replace(observed, containers={**observed.containers, name: observed.containers[name][1:]})
        return await self._start_container(pod, container, kind, remaining, sandbox, attempt=instance.attempt)

    async def _start_container(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        kind: str,
        observed: Observed,
        sandbox: SandboxObservation,
        attempt: int | None = None,
    ) -> bool:
        ctx, waiting = self.ctx, self.progress.waiting
        name = container["name"]
        image_ref = await self._ensure_image(pod, container)
        if image_ref is None:
            return False
        pod_ip = sandbox.ip or ctx.host_ip
        env_ctx = specs.EnvContext(
            pod=pod,
            node_name=ctx.node_name,
            pod_ip=pod_ip,
            host_ip=ctx.host_ip,
            pod_ips=[pod_ip, *sandbox.additional_ips],
        )
        if attempt is None:
            attempt = self._next_attempt(name, observed)
        try:
            objects = await self._files.objects(pod)
            env = specs.resolve_env(container, env_ctx, objects)
            files = await self._files.volume_files(pod, objects, sandbox)
            volume_paths, term_log = await asyncio.to_thread(
                self._prepare_host_files, pod, container, attempt, files
            )
            mounts = specs.volume_mounts(container, volume_paths)
        except errors.VnodeError as exc:
            self._fail_waiting(pod, container, "CreateContainerConfigError", str(exc), "Failed")
            return False
        config = specs.container_config(
            pod,
            container,
            kind=kind,  # type: ignore[arg-type]
            restart_count=attempt,
            image_ref=image_ref,
            env=env,
            mounts=mounts,
            termination_log_host_path=term_log,
        )
        config.labels[labels.NODE_LABEL] = ctx.node_name
        sandbox_config = await self.sandbox_config(pod, sandbox.attempt)
        try:
            container_id = await ctx.cri.create_container(sandbox.id, config, sandbox_config)
        except (errors.RuntimeFailure, errors.NotFound) as exc:
            self._fail_waiting(pod, container, "CreateContainerError", str(exc), "Failed")
            return False
        self.progress.attempts[name] = attempt
        self._handled.add(container_id)
        ctx.events.event(pod, "Normal", "Created", f"Created container {name}")
        try:
            # The attempt number is also on the container's labels: persisting it need not
            # delay the start.
            await asyncio.gather(self._persist(), ctx.cri.start_container(container_id))
        except (errors.RuntimeFailure, errors.NotFound) as exc:
            # containerd records the instance as exited (StartError); the back-off takes over.
            waiting[name] = Waiting("RunContainerError", str(exc))
            ctx.events.event(pod, "Warning", "Failed", f"Error: {exc}")
            self._schedule(1.0)
            return True
        waiting.pop(name, None)
        ctx.events.event(pod, "Normal", "Started", f"Started container {name}")
        log.info(
            "pod %s: container %s started (%s, attempt %d)", pod_name(pod), name, container_id[:12], attempt
        )
        return True

    def _prepare_host_files(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        attempt: int,
        files: dict[str, dict[str, tuple[bytes, int]]] | None,
    ) -> tuple[dict[str, Path], Path]:
        """Volumes, the termination-log file and the log directory, in one trip to a thread."""
        volumes = self.ctx.volumes
        paths = volumes.prepare(pod, files)
        term_log = volumes.termination_log_path(pod, container, attempt)
        make_dirs(specs.pod_log_dir(self.ctx.logs_dir, pod) / container["name"])
        return paths, term_log

    def _next_attempt(self, name: str, observed: Observed) -> int:
        instances = observed.containers.get(name, [])
        last = max([self.progress.attempts.get(name, -1), *(c.attempt for c in instances)])
        return last + 1

    async def _ensure_image(self, pod: dict[str, Any], container: dict[str, Any]) -> str | None:
        """The image ID to run, pulling per imagePullPolicy; None (and a waiting reason) if not."""
        ctx, waiting = self.ctx, self.progress.waiting
        name = container["name"]
        try:
            image = images.normalize_image(container.get("image", ""))
        except errors.InvalidInput as exc:
            self._fail_waiting(pod, container, "InvalidImageName", str(exc), "InspectFailed")
            return None
        present = await ctx.cri.image_ref(image)
        decision = images.image_pull_needed(container, present is not None)
        if decision is None:
            message = f'Container image "{image}" is not present with pull policy of Never'
            self._fail_waiting(pod, container, "ErrImageNeverPull", message, "ErrImageNeverPull")
            return None
        if not decision:
            return present
        key = f"{self.uid}/image:{image}"
        remaining = ctx.image_backoff.remaining(key, None, ctx.now())
        if (
            remaining > 0
            and name in waiting
            and waiting[name].reason
            in (
                "ErrImagePull",
                "ImagePullBackOff",
            )
        ):
            message = f'Back-off pulling image "{image}"'
            waiting[name] = Waiting("ImagePullBackOff", message)
            self._schedule(remaining)
            return None
        ctx.events.event(pod, "Normal", "Pulling", f'Pulling image "{image}"')
        try:
            objects = await self._files.objects(pod)
            auth = apiobjects.pull_auth(pod, image, objects) if objects is not None else None
            ref = await ctx.cri.pull_image(image, auth)
        except (errors.RuntimeFailure, errors.NotFound) as exc:
            message = f'Failed to pull image "{image}": {exc}'
            waiting[name] = Waiting("ErrImagePull", message)
            ctx.events.event(pod, "Warning", "Failed", message)
            ctx.image_backoff.next_delay(key, ctx.now())
            # Sync again soon: that pass reports ImagePullBackOff and waits out the delay.
            self._schedule(1.0)
            return None
        ctx.image_backoff.reset(key)
        ctx.events.event(pod, "Normal", "Pulled", f'Successfully pulled image "{image}"')
        return ref

    def _fail_waiting(
        self, pod: dict[str, Any], container: dict[str, Any], reason: str, message: str, event_reason: str
    ) -> None:
        waiting = self.progress.waiting
        name = container["name"]
        if waiting.get(name) != Waiting(reason, message):
            self.ctx.events.event(pod, "Warning", event_reason, f"Error: {message}")
            log.warning("pod %s: container %s: %s: %s", pod_name(pod), name, reason, message)
        waiting[name] = Waiting(reason, message)
        key = f"{self.uid}/{name}"
        self._schedule(self.ctx.crash_backoff.next_delay(key, self.ctx.now()))

    def _set_all_waiting(self, pod: dict[str, Any], reason: str, message: str) -> None:
        spec = pod.get("spec", {})
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            self.progress.waiting[c["name"]] = Waiting(reason, message)

    async def _prune(self, name: str, observed: Observed) -> None:
        """Remove exited instances beyond the ones status and ``previous`` logs still need."""
        for old in observed.containers.get(name, [])[KEEP_INSTANCES - 1 :]:
            if old.state == ContainerState.EXITED:
                await ignore_missing(self.ctx.cri.remove_container(old.id))


def make_dirs(path: Path) -> None:
    path.mkdir(mode=0o755, parents=True, exist_ok=True)


async def ignore_missing(call: Awaitable[None]) -> None:
    with contextlib.suppress(errors.NotFound):
        await call


def go_duration(seconds: float) -> str:
    """Seconds as Go prints a time.Duration (``10s``, ``2m40s``, ``5m0s``), as kubelet's messages do."""
    total = int(seconds)
    minutes, secs = divmod(total, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
