"""One pod's worker: makes the runtime match the pod spec, serially, and computes the pod's status.

A worker is level-triggered, like kubelet's syncPod: every sync observes the pod's sandboxes and
containers afresh through CRI (by the ``io.kubernetes.pod.uid`` label), decides the next actions
from that observation and the spec, carries them out, and observes again for the status. Nothing
it decides depends on memory of earlier syncs except what is also persisted (restart attempts and
back-off, in the store), so a restarted vnode re-adopts running containers by their labels and
does nothing to them.

Workers for different pods run in parallel; one worker never runs two syncs at once. The pod
manager (``vnode.runtime.pods``) owns the workers, feeds them spec changes and wakes them when the
relist sees their containers change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vnode import errors
from vnode.kube import images
from vnode.kube.restarts import should_restart
from vnode.probes.manager import Kill, Prober
from vnode.provider.protocols import EventSink, ObjectSource
from vnode.provider.types import (
    ContainerObservation,
    ContainerState,
    PodObservation,
    ProbeState,
    SandboxObservation,
    Waiting,
)
from vnode.runtime import apiobjects, labels, specs
from vnode.runtime.backoff import Backoff
from vnode.runtime.cgroups import CgroupDriver, pod_cgroup_parent
from vnode.runtime.cri import CriClient
from vnode.runtime.observation import Observed, Observer
from vnode.runtime.podfiles import PodFiles, has_api_volumes
from vnode.runtime.probing import probe_states
from vnode.runtime.status import compute_pod_status
from vnode.runtime.validation import validate_pod
from vnode.runtime.volumes import VolumeManager
from vnode.store.layout import PodState, SyncProblem

log = logging.getLogger(__name__)

MIN_GRACE_SECONDS = 2  # kubelet's minimumGracePeriodInSeconds
DEFAULT_GRACE_SECONDS = 30
KEEP_INSTANCES = 2  # per container name: the current one and the one lastState reports
RESYNC_SECONDS = 60.0  # kubelet's syncFrequency: a worker re-checks its pod at least this often
OBJECT_RESYNC_SECONDS = 20.0  # pods using unwatched configMaps/secrets: how often their files are refreshed
SYNC_KEY = "<sync>"  # the crash back-off's key for a pod whose syncs fail
RETRY_SECONDS = 5.0  # after a runtime error that has no back-off of its own


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


@dataclass
class WorkerContext:
    """What every worker shares: the runtime, the node's identity and the collaborators."""

    cri: CriClient
    volumes: VolumeManager
    events: EventSink
    node_name: str
    host_ip: str
    logs_dir: Path
    dns: specs.DNSSettings
    crash_backoff: Backoff
    image_backoff: Backoff
    now: Callable[[], datetime] = utcnow
    # The configMaps and secrets pods refer to; None on a standalone node.
    objects: ObjectSource | None = None
    # Gives every sandbox its pod cgroup (vnode.runtime.cgroups); None leaves the runtime's default.
    cgroups: CgroupDriver | None = None
    # Runs the containers' probes (vnode.probes); None: no probes run (benchmarks of the rest).
    prober: Prober | None = None


class PodWorker:
    """Drives one pod towards its spec; see the module docstring."""

    def __init__(
        self,
        ctx: WorkerContext,
        pod: dict[str, Any],
        state: PodState | None = None,
        *,
        persist: Callable[[str, PodState], Awaitable[None]],
        status_changed: Callable[[str], None],
    ) -> None:
        self.ctx = ctx
        # The owner's (the pod manager's): it writes our state to the store, and hears of changes.
        self._save = persist
        self._status_changed = status_changed
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        saved: dict[str, Any] = dict(state) if state is not None else {}  # a record may be partial
        self.attempts: dict[str, int] = dict(saved.get("attempts", {}))
        self.sandbox_attempt: int = int(saved.get("sandboxAttempt", -1))
        self.status: dict[str, Any] | None = saved.get("status")
        self.terminal: bool = bool(saved.get("terminal", False))
        self.evicted: str | None = saved.get("evicted")  # the eviction's message, once evicted
        self.problem: SyncProblem | None = saved.get("problem")  # why syncs fail: message, since
        self.deleting = False
        self.done = asyncio.Event()  # set once a deleting pod has been cleaned up
        self.synced = asyncio.Event()  # set after the first completed sync
        self._waiting: dict[str, Waiting] = {}
        self._rejection: str | None = None
        self._observer = Observer(ctx.cri, ctx.volumes, self.uid, ctx.node_name)
        self._handled: set[str] = set()  # containers this process created or took over
        self._kills: dict[str, Kill] = {}  # container name -> a probe's kill not yet done
        self._wake = asyncio.Event()
        self._next_wake: float | None = None
        self._fingerprint: frozenset[tuple[str, str]] = frozenset()
        self._files = PodFiles(ctx.objects, ctx.node_name, ctx.host_ip)
        self.last_observed = Observed()
        for name, entry in (saved.get("backoff") or {}).items():
            ctx.crash_backoff.restore(f"{self.uid}/{name}", entry)

    # -- inputs from the manager -------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"{self.pod['metadata'].get('namespace', 'default')}/{self.pod['metadata']['name']}"

    def update(self, pod: dict[str, Any]) -> None:
        """A new version of the same pod (same UID)."""
        self.pod = pod
        self.wake()

    def delete(self) -> None:
        """The pod is gone from its source: stop and remove everything it has on this node."""
        self.deleting = True
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def evict(self, message: str) -> None:
        """The node is short of a resource: stop the pod for good (phase Failed, reason Evicted),
        as kubelet's eviction manager does; the source still decides when it is deleted."""
        if self.evicted is not None:
            return
        self.evicted = message
        self.terminal = True
        log.warning("pod %s evicted: %s", self.name, message)
        self.ctx.events.event(self.pod, "Warning", "Evicted", message)
        self.wake()

    def probe_failed(self, kill: Kill) -> None:
        """A liveness or startup probe failed past its threshold: restart that container."""
        self._kills[kill.container] = kill
        self.wake()

    def observe_listing(self, fingerprint: frozenset[tuple[str, str]]) -> None:
        """The relist saw this pod's runtime objects; wake the worker if anything changed."""
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self.wake()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync whenever woken, on timers (back-off expiry) and every RESYNC_SECONDS."""
        while True:
            self._wake.clear()
            self._next_wake = None
            try:
                await self.sync()
            except errors.Unavailable as exc:
                log.warning("pod %s: runtime unavailable: %s", self.name, exc)
                self._schedule(RETRY_SECONDS)
            except errors.VnodeError as exc:
                await self._sync_failed(str(exc))
            except Exception:
                log.exception("pod %s: sync failed unexpectedly", self.name)
                self._schedule(RETRY_SECONDS)
            else:
                if self.problem is not None:
                    await self._sync_works()
            finally:
                self.synced.set()
            if self.deleting and self.done.is_set():
                return
            timeout = self._next_wake if self._next_wake is not None else RESYNC_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _sync_failed(self, message: str) -> None:
        """The runtime refused something this pod needs (a container stuck in its start that
        cannot be removed, say): retry with back-off, say it once, and keep it for ``vnode status``."""
        ctx = self.ctx
        if self.problem is None or message != self.problem["message"]:
            log.warning("pod %s: sync failed (retrying with back-off): %s", self.name, message)
            self.problem = SyncProblem(message=message, since=ctx.now().strftime("%Y-%m-%dT%H:%M:%SZ"))
            await self._persist()
        self._schedule(ctx.crash_backoff.next_delay(f"{self.uid}/{SYNC_KEY}", ctx.now()))

    async def _sync_works(self) -> None:
        log.info("pod %s: sync works again", self.name)
        self.problem = None
        self.ctx.crash_backoff.reset(f"{self.uid}/{SYNC_KEY}")
        if not self.done.is_set():  # a removed pod's state is gone from the store: keep it so
            await self._persist()

    def _schedule(self, seconds: float) -> None:
        seconds = max(seconds, 0.05)
        if self._next_wake is None or seconds < self._next_wake:
            self._next_wake = seconds

    async def sync(self) -> None:
        """One pass: observe, act, observe again, publish the status."""
        observed = await self.observe()
        # What this pass decides on. The look after acting is only published: a container that
        # exited before it must still wake the worker at the next relist (it did not decide on it).
        self._fingerprint = observed.fingerprint
        if self.deleting:
            await self._kill_pod(observed, remove=True)
            await asyncio.to_thread(self.ctx.volumes.cleanup, self.uid)
            self._forget_backoff()
            self.last_observed = Observed()
            self.done.set()
            log.info("pod %s: containers and sandbox removed", self.name)
            return
        problems = validate_pod(self.pod, api=self.ctx.objects is not None)
        if problems:
            self._reject("; ".join(problems))
        elif not self.terminal:
            acted = await self._converge(observed)
            if acted:
                observed = await self.observe()
            elif observed.sandbox is not None and observed.sandbox.ready:
                await self._refresh_api_volumes()
                await self._collect_sandboxes(observed)
        if self.terminal and observed.sandbox is not None and observed.sandbox.ready:
            await self._kill_pod(observed, remove=False)
            observed = await self.observe()
        self.last_observed = observed
        await self._publish(observed)

    # -- observing ---------------------------------------------------------------------------

    async def observe(self) -> Observed:
        return await self._observer.observe()

    # -- deciding and acting -----------------------------------------------------------------

    def _reject(self, message: str) -> None:
        if self._rejection != message:
            self._rejection = message
            log.error("pod %s rejected: %s", self.name, message)
            self.ctx.events.event(self.pod, "Warning", "FailedValidation", message)
        self.terminal = True

    async def _converge(self, observed: Observed) -> bool:
        """Take the actions the spec asks for; True if anything was done to the runtime."""
        spec = self.pod.get("spec", {})
        sandbox = observed.sandbox
        acted = False
        if sandbox is None or not sandbox.ready:
            acted = True
            if sandbox is not None:
                log.info("pod %s: sandbox %s is not ready; recreating the pod", self.name, sandbox.id[:12])
                await self._kill_pod(observed, remove=False)
            sandbox = await self._create_sandbox(observed)
            if sandbox is None:
                return False
            # Go on in this pass: the new sandbox has no containers, the older instances still
            # count for restart numbering.
            observed = replace(observed, sandboxes=[sandbox, *observed.sandboxes])

        policy = spec.get("restartPolicy", "Always")
        # Init containers, one after another; a sidecar (restartPolicy Always) only has to start.
        for container in spec.get("initContainers") or []:
            name = container["name"]
            current = observed.current(name)
            sidecar = container.get("restartPolicy") == "Always"
            if sidecar and await self._probe_kill(name, current):
                return True
            if current is not None and current.state == ContainerState.RUNNING:
                if sidecar:
                    continue
                return acted
            if current is not None and current.state == ContainerState.EXITED:
                if current.exit_code == 0 and not sidecar:
                    continue
                if policy == "Never" and not sidecar:
                    self.terminal = True
                    return acted
            return await self._start_or_back_off(container, labels.TYPE_INIT, observed, sandbox) or acted

        for container in spec.get("containers") or []:
            name = container["name"]
            current = observed.current(name)
            if await self._probe_kill(name, current):
                return True  # the next pass sees it exited and restarts it (back-off applies)
            if current is not None and current.state == ContainerState.RUNNING:
                if current.spec_hash and current.spec_hash != specs.container_hash(container):
                    log.info("pod %s: container %s spec changed; restarting it", self.name, name)
                    await self._stop_container(current)
                    acted = True
                    self._waiting.pop(name, None)
                continue
            if (
                current is not None
                and current.state == ContainerState.EXITED
                and not should_restart(policy, current.exit_code)
            ):
                self._waiting.pop(name, None)
                continue
            acted = (
                await self._start_or_back_off(container, labels.TYPE_CONTAINER, observed, sandbox) or acted
            )

        if self._all_done(observed):
            self.terminal = True
        return acted

    def _all_done(self, observed: Observed) -> bool:
        spec = self.pod.get("spec", {})
        policy = spec.get("restartPolicy", "Always")
        if policy == "Always":
            return False
        for container in spec.get("containers") or []:
            current = observed.current(container["name"])
            if current is None or current.state != ContainerState.EXITED:
                return False
            if should_restart(policy, current.exit_code):
                return False
        return True

    async def _create_sandbox(self, observed: Observed) -> SandboxObservation | None:
        """Run a new sandbox for the pod; None (with a waiting reason and a retry) if that failed.

        Its attempt follows the newest the runtime has, as kubelet numbers them, not only the one
        this worker remembers: a sandbox whose creation a SIGKILL cut short still holds the name
        of its attempt in the runtime, and reusing that number fails ("name is reserved") forever.
        """
        ctx = self.ctx
        key = f"{self.uid}/<sandbox>"
        remaining = ctx.crash_backoff.remaining(key, None, ctx.now())
        if remaining > 0 and self.sandbox_attempt >= 0:
            self._schedule(remaining)
            return None
        attempt = max([self.sandbox_attempt, *(s.attempt for s in observed.sandboxes)]) + 1
        try:
            files = await self._files.volume_files(self.pod, await self._files.objects(self.pod), None)
            await asyncio.to_thread(ctx.volumes.prepare, self.pod, files)
        except errors.VnodeError as exc:
            self._set_all_waiting("ContainerCreating", str(exc))
            ctx.events.event(self.pod, "Warning", "FailedMount", str(exc))
            self._schedule(ctx.crash_backoff.next_delay(key, ctx.now()))
            return None
        log_dir = specs.pod_log_dir(ctx.logs_dir, self.pod)
        await asyncio.to_thread(_make_dirs, log_dir)
        config = await self._sandbox_config(attempt)
        try:
            sandbox_id = await ctx.cri.run_pod_sandbox(config)
        except (errors.RuntimeFailure, errors.NotFound) as exc:
            message = f"Failed to create pod sandbox: {exc}"
            self._set_all_waiting("ContainerCreating", message)
            ctx.events.event(self.pod, "Warning", "FailedCreatePodSandBox", message)
            self._schedule(ctx.crash_backoff.next_delay(key, ctx.now()))
            return None
        log.info("pod %s: sandbox %s started (attempt %d)", self.name, sandbox_id[:12], attempt)
        self.sandbox_attempt = attempt
        ctx.crash_backoff.reset(key)
        self._waiting.clear()
        _, status = await asyncio.gather(self._persist(), ctx.cri.pod_sandbox_status(sandbox_id))
        return status

    async def _sandbox_config(self, attempt: int) -> Any:
        """The sandbox's config as created: node label, and the pod cgroup under its QoS class."""
        ctx = self.ctx
        log_dir = specs.pod_log_dir(ctx.logs_dir, self.pod)
        config = specs.sandbox_config(self.pod, log_dir=log_dir, attempt=attempt, dns=ctx.dns)
        config.labels[labels.NODE_LABEL] = ctx.node_name
        if ctx.cgroups is not None:
            config.linux.cgroup_parent = pod_cgroup_parent(self.pod, await ctx.cgroups.get())
        return config

    async def _start_or_back_off(
        self, container: dict[str, Any], kind: str, observed: Observed, sandbox: SandboxObservation
    ) -> bool:
        """Start a new instance of ``container`` unless its crash-loop back-off says wait."""
        ctx = self.ctx
        name = container["name"]
        key = f"{self.uid}/{name}"
        instances = observed.containers.get(name, [])
        previous = instances[0] if instances else None
        if previous is not None and self._start_cut_short(previous, observed):
            return await self._take_over(previous, container, kind, observed, sandbox)
        if previous is not None and previous.state == ContainerState.EXITED and previous.finished_at:
            remaining = ctx.crash_backoff.remaining(key, previous.finished_at, ctx.now())
            if remaining > 0:
                delay = ctx.crash_backoff.current_delay(key)
                message = (
                    f"back-off {_go_duration(delay)} restarting failed container={name} "
                    f"pod={self.pod['metadata']['name']}_{self.pod['metadata'].get('namespace', 'default')}"
                    f"({self.uid})"
                )
                if self._waiting.get(name) != Waiting("CrashLoopBackOff", message):
                    ctx.events.event(
                        self.pod, "Warning", "BackOff", f"Back-off restarting failed container {name}"
                    )
                self._waiting[name] = Waiting("CrashLoopBackOff", message)
                self._schedule(remaining)
                return False
        started = await self._start_container(container, kind, observed, sandbox)
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
                log.info("pod %s: started container %s left created by an earlier run", self.name, name)
                self.attempts[name] = instance.attempt
                self._waiting.pop(name, None)
                self.ctx.events.event(self.pod, "Normal", "Started", f"Started container {name}")
                return True
        # Raises while the runtime is still starting it: the sync is retried with back-off.
        await _ignore_missing(self.ctx.cri.remove_container(instance.id))
        self._handled.add(instance.id)
        log.info("pod %s: replacing container %s, whose start an earlier run cut short", self.name, name)
        remaining = replace(observed, containers={**observed.containers, name: observed.containers[name][1:]})
        return await self._start_container(container, kind, remaining, sandbox, attempt=instance.attempt)

    async def _start_container(
        self,
        container: dict[str, Any],
        kind: str,
        observed: Observed,
        sandbox: SandboxObservation,
        attempt: int | None = None,
    ) -> bool:
        ctx = self.ctx
        name = container["name"]
        image_ref = await self._ensure_image(container)
        if image_ref is None:
            return False
        pod_ip = sandbox.ip or ctx.host_ip
        env_ctx = specs.EnvContext(
            pod=self.pod,
            node_name=ctx.node_name,
            pod_ip=pod_ip,
            host_ip=ctx.host_ip,
            pod_ips=[pod_ip, *sandbox.additional_ips],
        )
        if attempt is None:
            attempt = self._next_attempt(name, observed)
        try:
            objects = await self._files.objects(self.pod)
            env = specs.resolve_env(container, env_ctx, objects)
            files = await self._files.volume_files(self.pod, objects, sandbox)
            volume_paths, term_log = await asyncio.to_thread(
                self._prepare_host_files, container, attempt, files
            )
            mounts = specs.volume_mounts(container, volume_paths)
        except errors.VnodeError as exc:
            self._fail_waiting(container, "CreateContainerConfigError", str(exc), "Failed")
            return False
        config = specs.container_config(
            self.pod,
            container,
            kind=kind,  # type: ignore[arg-type]
            restart_count=attempt,
            image_ref=image_ref,
            env=env,
            mounts=mounts,
            termination_log_host_path=term_log,
        )
        config.labels[labels.NODE_LABEL] = ctx.node_name
        sandbox_config = await self._sandbox_config(sandbox.attempt)
        try:
            container_id = await ctx.cri.create_container(sandbox.id, config, sandbox_config)
        except (errors.RuntimeFailure, errors.NotFound) as exc:
            self._fail_waiting(container, "CreateContainerError", str(exc), "Failed")
            return False
        self.attempts[name] = attempt
        self._handled.add(container_id)
        ctx.events.event(self.pod, "Normal", "Created", f"Created container {name}")
        try:
            # The attempt number is also on the container's labels: persisting it need not
            # delay the start.
            await asyncio.gather(self._persist(), ctx.cri.start_container(container_id))
        except (errors.RuntimeFailure, errors.NotFound) as exc:
            # containerd records the instance as exited (StartError); the back-off takes over.
            self._waiting[name] = Waiting("RunContainerError", str(exc))
            ctx.events.event(self.pod, "Warning", "Failed", f"Error: {exc}")
            self._schedule(1.0)
            return True
        self._waiting.pop(name, None)
        ctx.events.event(self.pod, "Normal", "Started", f"Started container {name}")
        log.info("pod %s: container %s started (%s, attempt %d)", self.name, name, container_id[:12], attempt)
        return True

    async def _refresh_api_volumes(self) -> None:
        """Rewrite configMap and secret volumes whose objects changed (atomic swap, kubelet style)."""
        objects = await self._files.objects(self.pod)
        if objects is None or not (
            objects or apiobjects.token_requests(self.pod) or has_api_volumes(self.pod)
        ):
            return
        source, namespace = self.ctx.objects, self.pod["metadata"].get("namespace", "default")
        if source is not None and not all(source.watched(kind, namespace, name) for kind, name in objects):
            # Watched objects wake the pod when they change; the others are polled.
            self._schedule(OBJECT_RESYNC_SECONDS)
        try:
            files = await self._files.volume_files(self.pod, objects, self.last_observed.sandbox)
        except errors.InvalidInput as exc:
            log.warning("pod %s: volumes not refreshed: %s", self.name, exc)
            return
        if files:
            await asyncio.to_thread(self.ctx.volumes.prepare, self.pod, files)

    def _prepare_host_files(
        self, container: dict[str, Any], attempt: int, files: dict[str, dict[str, tuple[bytes, int]]] | None
    ) -> tuple[dict[str, Path], Path]:
        """Volumes, the termination-log file and the log directory, in one trip to a thread."""
        volumes = self.ctx.volumes
        paths = volumes.prepare(self.pod, files)
        term_log = volumes.termination_log_path(self.pod, container, attempt)
        _make_dirs(specs.pod_log_dir(self.ctx.logs_dir, self.pod) / container["name"])
        return paths, term_log

    def _next_attempt(self, name: str, observed: Observed) -> int:
        instances = observed.containers.get(name, [])
        last = max([self.attempts.get(name, -1), *(c.attempt for c in instances)])
        return last + 1

    async def _ensure_image(self, container: dict[str, Any]) -> str | None:
        """The image ID to run, pulling per imagePullPolicy; None (and a waiting reason) if not."""
        ctx = self.ctx
        name = container["name"]
        try:
            image = images.normalize_image(container.get("image", ""))
        except errors.InvalidInput as exc:
            self._fail_waiting(container, "InvalidImageName", str(exc), "InspectFailed")
            return None
        present = await ctx.cri.image_ref(image)
        decision = images.image_pull_needed(container, present is not None)
        if decision is None:
            message = f'Container image "{image}" is not present with pull policy of Never'
            self._fail_waiting(container, "ErrImageNeverPull", message, "ErrImageNeverPull")
            return None
        if not decision:
            return present
        key = f"{self.uid}/image:{image}"
        remaining = ctx.image_backoff.remaining(key, None, ctx.now())
        if (
            remaining > 0
            and name in self._waiting
            and self._waiting[name].reason
            in (
                "ErrImagePull",
                "ImagePullBackOff",
            )
        ):
            message = f'Back-off pulling image "{image}"'
            self._waiting[name] = Waiting("ImagePullBackOff", message)
            self._schedule(remaining)
            return None
        ctx.events.event(self.pod, "Normal", "Pulling", f'Pulling image "{image}"')
        try:
            objects = await self._files.objects(self.pod)
            auth = apiobjects.pull_auth(self.pod, image, objects) if objects is not None else None
            ref = await ctx.cri.pull_image(image, auth)
        except (errors.RuntimeFailure, errors.NotFound) as exc:
            message = f'Failed to pull image "{image}": {exc}'
            self._waiting[name] = Waiting("ErrImagePull", message)
            ctx.events.event(self.pod, "Warning", "Failed", message)
            ctx.image_backoff.next_delay(key, ctx.now())
            # Sync again soon: that pass reports ImagePullBackOff and waits out the delay.
            self._schedule(1.0)
            return None
        ctx.image_backoff.reset(key)
        ctx.events.event(self.pod, "Normal", "Pulled", f'Successfully pulled image "{image}"')
        return ref

    def _fail_waiting(self, container: dict[str, Any], reason: str, message: str, event_reason: str) -> None:
        name = container["name"]
        if self._waiting.get(name) != Waiting(reason, message):
            self.ctx.events.event(self.pod, "Warning", event_reason, f"Error: {message}")
            log.warning("pod %s: container %s: %s: %s", self.name, name, reason, message)
        self._waiting[name] = Waiting(reason, message)
        key = f"{self.uid}/{name}"
        self._schedule(self.ctx.crash_backoff.next_delay(key, self.ctx.now()))

    def _set_all_waiting(self, reason: str, message: str) -> None:
        spec = self.pod.get("spec", {})
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            self._waiting[c["name"]] = Waiting(reason, message)

    async def _probe_kill(self, name: str, current: ContainerObservation | None) -> bool:
        """Stop ``current`` if a probe asked for it (the kill names the instance it judged)."""
        kill = self._kills.pop(name, None)
        if kill is None or current is None or current.id != kill.container_id:
            return False
        if current.state != ContainerState.RUNNING:
            return False
        await self._stop_container(current, grace=kill.grace, message=kill.message)
        return True

    async def _stop_container(
        self, container: ContainerObservation, *, grace: int | None = None, message: str = ""
    ) -> None:
        # Recorded when the stop begins: for the whole grace period it says what is going on.
        grace = self.grace_seconds() if grace is None else grace
        message = message or f"Stopping container {container.name} (grace period {grace}s)"
        self.ctx.events.event(self.pod, "Normal", "Killing", message)
        with contextlib.suppress(errors.NotFound):
            await self.ctx.cri.stop_container(container.id, grace)

    async def _prune(self, name: str, observed: Observed) -> None:
        """Remove exited instances beyond the ones status and ``previous`` logs still need."""
        for old in observed.containers.get(name, [])[KEEP_INSTANCES - 1 :]:
            if old.state == ContainerState.EXITED:
                await _ignore_missing(self.ctx.cri.remove_container(old.id))

    async def _collect_sandboxes(self, observed: Observed) -> None:
        """Remove the pod's older sandboxes once they are stopped and hold no container, as
        kubelet's garbage collector does (a sandbox recreated after a crash or a SIGKILL of vnode
        would otherwise stay in the runtime for the pod's whole life)."""
        holding = set(observed.sandbox_of.values())
        for old in observed.sandboxes[1:]:
            if not old.ready and old.id not in holding:
                await _ignore_missing(self.ctx.cri.remove_pod_sandbox(old.id))
                log.info("pod %s: removed old sandbox %s", self.name, old.id[:12])

    async def _kill_pod(self, observed: Observed, *, remove: bool) -> None:
        """Stop every running container (in parallel, with the grace period), then the sandboxes."""
        running = [
            c
            for c in observed.all_containers()
            if c.state in (ContainerState.RUNNING, ContainerState.CREATED)
        ]
        if running:
            await asyncio.gather(*(self._stop_container(c) for c in running))
        for sandbox in observed.sandboxes:
            await _ignore_missing(self.ctx.cri.stop_pod_sandbox(sandbox.id))
        if remove:
            for c in observed.all_containers():
                await _ignore_missing(self.ctx.cri.remove_container(c.id))
            for sandbox in observed.sandboxes:
                await _ignore_missing(self.ctx.cri.remove_pod_sandbox(sandbox.id))
            if self.ctx.cgroups is not None:
                await self.ctx.cgroups.remove(self.uid)

    def grace_seconds(self) -> int:
        meta, spec = self.pod.get("metadata", {}), self.pod.get("spec", {})
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        try:
            return max(MIN_GRACE_SECONDS, int(grace))
        except (TypeError, ValueError):
            return DEFAULT_GRACE_SECONDS

    def _forget_backoff(self) -> None:
        self.ctx.crash_backoff.forget(f"{self.uid}/")
        self.ctx.image_backoff.forget(f"{self.uid}/")

    # -- status ------------------------------------------------------------------------------

    async def _publish(self, observed: Observed) -> None:
        ctx = self.ctx
        sandbox = observed.sandbox
        if sandbox is not None and not sandbox.ip and self.pod.get("spec", {}).get("hostNetwork"):
            sandbox = replace(sandbox, ip=ctx.host_ip)
        if self._rejection is not None:
            status = self._rejected_status()
        else:
            obs = PodObservation(
                sandbox=sandbox,
                containers=observed.containers,
                waiting=dict(self._waiting),
                host_ip=ctx.host_ip,
                terminal=self.terminal,
                probes=self._probe_states(observed, sandbox.ip if sandbox is not None else ""),
            )
            status = compute_pod_status(self.pod, obs, self.status, ctx.now())
            if self.evicted is not None:
                status = {**status, "phase": "Failed", "reason": "Evicted", "message": self.evicted}
        if status != self.status:
            self.status = status
            await self._persist()
            self._status_changed(self.uid)

    def _probe_states(self, observed: Observed, pod_ip: str) -> dict[str, ProbeState]:
        """Tell the prober what runs now; what its probes say of each container's instance."""
        if self.ctx.prober is None:
            return {}
        deleting = self.deleting or bool(self.pod["metadata"].get("deletionTimestamp"))
        return probe_states(
            self.ctx.prober,
            self.pod,
            observed,
            self.status,
            pod_ip or self.ctx.host_ip,
            deleting=deleting,
            terminal=self.terminal,
        )

    def _rejected_status(self) -> dict[str, Any]:
        previous = self.status or {}
        return {
            "phase": "Failed",
            "reason": "InvalidPod",
            "message": f"Pod was rejected: {self._rejection}",
            "hostIP": self.ctx.host_ip,
            "startTime": previous.get("startTime") or self.ctx.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def state(self) -> PodState:
        """What survives a restart of vnode (kept in the store's ``podstate`` table)."""
        backoff = {}
        for name in self.attempts:
            key = f"{self.uid}/{name}"
            entry = self.ctx.crash_backoff.to_state(key)
            if entry is not None:
                backoff[name] = entry
        state = PodState(
            attempts=self.attempts,
            sandboxAttempt=self.sandbox_attempt,
            status=self.status,
            terminal=self.terminal,
            backoff=backoff,
        )
        if self.evicted is not None:
            state["evicted"] = self.evicted
        if self.problem is not None:
            state["problem"] = self.problem
        return state

    async def _persist(self) -> None:
        await self._save(self.uid, self.state())

    async def persist_now(self) -> None:
        """Write the state at once (an eviction must survive a restart before the next sync)."""
        await self._persist()


def _make_dirs(path: Path) -> None:
    path.mkdir(mode=0o755, parents=True, exist_ok=True)


async def _ignore_missing(call: Awaitable[None]) -> None:
    with contextlib.suppress(errors.NotFound):
        await call


def _go_duration(seconds: float) -> str:
    """Seconds as Go prints a time.Duration (``10s``, ``2m40s``, ``5m0s``), as kubelet's messages do."""
    total = int(seconds)
    minutes, secs = divmod(total, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
