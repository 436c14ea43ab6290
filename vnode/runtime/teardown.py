"""Stopping a pod's containers and removing what the runtime keeps of it.

Separate from the worker's loop because every way a container goes down shares these rules:
deletion, a terminal pod (evicted, rejected, or all done), a probe's kill and a changed spec all
stop with the pod's grace period (``deletionGracePeriodSeconds``, else
``terminationGracePeriodSeconds``, never under kubelet's minimum) and say so with a Killing Event
when the stop begins; a pod is stopped containers first (in parallel), then its sandboxes; and a
pod's older sandboxes are collected once nothing holds them, as kubelet's garbage collector does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from vnode import errors
from vnode.provider.types import ContainerObservation, ContainerState
from vnode.runtime.context import WorkerContext
from vnode.runtime.observation import Observed
from vnode.runtime.starts import ignore_missing, pod_name

log = logging.getLogger(__name__)

MIN_GRACE_SECONDS = 2  # kubelet's minimumGracePeriodInSeconds
DEFAULT_GRACE_SECONDS = 30


def grace_seconds(pod: dict[str, Any]) -> int:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    try:
        return max(MIN_GRACE_SECONDS, int(grace))
    except (TypeError, ValueError):
        return DEFAULT_GRACE_SECONDS


async def stop_container(
    ctx: WorkerContext,
    pod: dict[str, Any],
    container: ContainerObservation,
    *,
    grace: int | None = None,
    message: str = "",
) -> None:
    # Recorded when the stop begins: for the whole grace period it says what is going on.
    grace = grace_seconds(pod) if grace is None else grace
    message = message or f"Stopping container {container.name} (grace period {grace}s)"
    ctx.events.event(pod, "Normal", "Killing", message)
    with contextlib.suppress(errors.NotFound):
        await ctx.cri.stop_container(container.id, grace)


async def kill_pod(
    ctx: WorkerContext, pod: dict[str, Any], uid: str, observed: Observed, *, remove: bool
) -> None:
    """Stop every running container (in parallel, with the grace period), then the sandboxes;
    with ``remove``, remove them all and the pod's cgroup too."""
    running = [
        c for c in observed.all_containers() if c.state in (ContainerState.RUNNING, ContainerState.CREATED)
    ]
    if running:
        await asyncio.gather(*(stop_container(ctx, pod, c) for c in running))
    for sandbox in observed.sandboxes:
        await ignore_missing(ctx.cri.stop_pod_sandbox(sandbox.id))
    if remove:
        for c in observed.all_containers():
            await ignore_missing(ctx.cri.remove_container(c.id))
        for sandbox in observed.sandboxes:
            await ignore_missing(ctx.cri.remove_pod_sandbox(sandbox.id))
        if ctx.cgroups is not None:
            await ctx.cgroups.remove(uid)


async def collect_sandboxes(ctx: WorkerContext, pod: dict[str, Any], observed: Observed) -> None:
    """Remove the pod's older sandboxes once they are stopped and hold no container, as
    kubelet's garbage collector does (a sandbox recreated after a crash or a SIGKILL of vnode
    would otherwise stay in the runtime for the pod's whole life)."""
    holding = set(observed.sandbox_of.values())
    for old in observed.sandboxes[1:]:
        if not old.ready and old.id not in holding:
            await ignore_missing(ctx.cri.remove_pod_sandbox(old.id))
            log.info("pod %s: removed old sandbox %s", pod_name(pod), old.id[:12])
