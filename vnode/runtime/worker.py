"""One pod's worker: makes the runtime match the pod spec, serially, and computes the pod's status.

A worker is level-triggered, like kubelet's syncPod: every sync observes the pod's sandboxes and
containers afresh through CRI (by the ``io.kubernetes.pod.uid`` label), decides the next actions
from that observation and the spec, carries them out, and observes again for the status. Nothing
it decides depends on memory of earlier syncs except what is also persisted (restart attempts and
back-off, in the store), so a restarted vnode re-adopts running containers by their labels and
does nothing to them.

Workers for different pods run in parallel; one worker never runs two syncs at once. The pod
manager (``vnode.runtime.pods``) owns the workers, feeds them spec changes and wakes them when the
relist sees their containers change. Starting containers (and when to wait instead) is the
starter's (``vnode.runtime.starts``); stopping them and removing a pod is ``vnode.runtime.teardown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from vnode import errors
from vnode.kube.restarts import should_restart
from vnode.probes.manager import Kill
from vnode.provider.types import ContainerObservation, ContainerState, PodObservation, ProbeState
from vnode.runtime import apiobjects, labels, specs
from vnode.runtime.context import WorkerContext
from vnode.runtime.observation import Observed, Observer
from vnode.runtime.podfiles import PodFiles, has_api_volumes
from vnode.runtime.probing import probe_states
from vnode.runtime.starts import Progress, Starter, pod_name
from vnode.runtime.status import compute_pod_status
from vnode.runtime.teardown import collect_sandboxes, kill_pod, stop_container
from vnode.runtime.validation import validate_pod
from vnode.store.layout import PodState, SyncProblem

log = logging.getLogger(__name__)

RESYNC_SECONDS = 60.0  # kubelet's syncFrequency: a worker re-checks its pod at least this often
OBJECT_RESYNC_SECONDS = 20.0  # pods using unwatched configMaps/secrets: how often their files are refreshed
SYNC_KEY = "<sync>"  # the crash back-off's key for a pod whose syncs fail
RETRY_SECONDS = 5.0  # after a runtime error that has no back-off of its own


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
        # The attempt numbers and waiting reasons, owned by the starter, persisted and published here.
        self.progress = Progress(
            attempts=dict(saved.get("attempts", {})), sandbox_attempt=int(saved.get("sandboxAttempt", -1))
        )
        self.status: dict[str, Any] | None = saved.get("status")
        self.terminal: bool = bool(saved.get("terminal", False))
        self.evicted: str | None = saved.get("evicted")  # the eviction's message, once evicted
        self.problem: SyncProblem | None = saved.get("problem")  # why syncs fail: message, since
        self.deleting = False
        self.done = asyncio.Event()  # set once a deleting pod has been cleaned up
        self.synced = asyncio.Event()  # set after the first completed sync
        self._rejection: str | None = None
        self._observer = Observer(ctx.cri, ctx.volumes, self.uid, ctx.node_name)
        self._kills: dict[str, Kill] = {}  # container name -> a probe's kill not yet done
        self._wake = asyncio.Event()
        self._next_wake: float | None = None
        self._fingerprint: frozenset[tuple[str, str]] = frozenset()
        self._files = PodFiles(ctx.objects, ctx.node_name, ctx.host_ip)
        self._starter = Starter(
            ctx, self.uid, self._files, self.progress, schedule=self._schedule, persist=self._persist
        )
        self.last_observed = Observed()
        for name, entry in (saved.get("backoff") or {}).items():
            ctx.crash_backoff.restore(f"{self.uid}/{name}", entry)

    # -- inputs from the manager -------------------------------------------------------------

    @property
    def name(self) -> str:
        return pod_name(self.pod)

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
            await kill_pod(self.ctx, self.pod, self.uid, observed, remove=True)
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
                await collect_sandboxes(self.ctx, self.pod, observed)
        if self.terminal and observed.sandbox is not None and observed.sandbox.ready:
            await kill_pod(self.ctx, self.pod, self.uid, observed, remove=False)
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
                await kill_pod(self.ctx, self.pod, self.uid, observed, remove=False)
            sandbox = await self._starter.create_sandbox(self.pod, observed)
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
            kind = labels.TYPE_INIT
            started = await self._starter.start_or_back_off(self.pod, container, kind, observed, sandbox)
            return started or acted

        for container in spec.get("containers") or []:
            name = container["name"]
            current = observed.current(name)
            if await self._probe_kill(name, current):
                return True  # the next pass sees it exited and restarts it (back-off applies)
            if current is not None and current.state == ContainerState.RUNNING:
                if current.spec_hash and current.spec_hash != specs.container_hash(container):
                    log.info("pod %s: container %s spec changed; restarting it", self.name, name)
                    await stop_container(self.ctx, self.pod, current)
                    acted = True
                    self.progress.waiting.pop(name, None)
                continue
            if (
                current is not None
                and current.state == ContainerState.EXITED
                and not should_restart(policy, current.exit_code)
            ):
                self.progress.waiting.pop(name, None)
                continue
            kind = labels.TYPE_CONTAINER
            started = await self._starter.start_or_back_off(self.pod, container, kind, observed, sandbox)
            acted = started or acted

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

    async def _probe_kill(self, name: str, current: ContainerObservation | None) -> bool:
        """Stop ``current`` if a probe asked for it (the kill names the instance it judged)."""
        kill = self._kills.pop(name, None)
        if kill is None or current is None or current.id != kill.container_id:
            return False
        if current.state != ContainerState.RUNNING:
            return False
        await stop_container(self.ctx, self.pod, current, grace=kill.grace, message=kill.message)
        return True

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
                waiting=dict(self.progress.waiting),
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
        for name in self.progress.attempts:
            key = f"{self.uid}/{name}"
            entry = self.ctx.crash_backoff.to_state(key)
            if entry is not None:
                backoff[name] = entry
        state = PodState(
            attempts=self.progress.attempts,
            sandboxAttempt=self.progress.sandbox_attempt,
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
