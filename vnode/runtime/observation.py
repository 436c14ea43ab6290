"""What the runtime holds of one pod, as its worker reads it at the start of every pass.

Sandboxes newest first; container instances per name newest first (by attempt, then creation);
full ``ContainerStatus`` asked only for instances whose listed state changed since the last look
(an exited instance's termination message read from its file once). ``fingerprint`` is what the
relist compares to tell a worker that something changed under it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from vnode import errors
from vnode.provider.types import ContainerObservation, ContainerState, SandboxObservation
from vnode.runtime import labels
from vnode.runtime.cri import CriClient
from vnode.runtime.volumes import VolumeManager


@dataclass
class Observed:
    """The runtime's view of one pod, fresh from CRI at the start of a sync."""

    sandboxes: list[SandboxObservation] = field(default_factory=list)  # newest first
    containers: dict[str, list[ContainerObservation]] = field(default_factory=dict)  # newest first
    sandbox_of: dict[str, str] = field(default_factory=dict)  # container id -> sandbox id
    fingerprint: frozenset[tuple[str, str]] = frozenset()  # as the relist computes it

    @property
    def sandbox(self) -> SandboxObservation | None:
        return self.sandboxes[0] if self.sandboxes else None

    def current(self, name: str) -> ContainerObservation | None:
        """The newest instance of ``name`` if it belongs to the current sandbox."""
        instances = self.containers.get(name)
        sandbox = self.sandbox
        if not instances or sandbox is None or self.sandbox_of.get(instances[0].id) != sandbox.id:
            return None
        return instances[0]

    def all_containers(self) -> list[ContainerObservation]:
        return [c for instances in self.containers.values() for c in instances]


class Observer:
    """Reads one pod's runtime objects; keeps the last statuses so unchanged ones are not asked again."""

    def __init__(self, cri: CriClient, volumes: VolumeManager, uid: str, node_name: str) -> None:
        self.cri = cri
        self.volumes = volumes
        self.uid = uid
        self.node_name = node_name
        self._known: dict[str, ContainerObservation] = {}

    async def observe(self) -> Observed:
        """Sandboxes and containers of this pod, with full status only for what changed."""
        cri = self.cri
        selector = {labels.POD_UID: self.uid, labels.NODE_LABEL: self.node_name}
        raw_sandboxes = await cri.list_pod_sandboxes(selector)
        raw_containers = await cri.list_containers(selector)
        sandboxes = []
        for sb in raw_sandboxes:
            try:
                sandboxes.append(await cri.pod_sandbox_status(sb.id))
            except errors.NotFound:
                continue
        sandboxes.sort(key=lambda s: (s.created_at or datetime.min.replace(tzinfo=UTC), s.id), reverse=True)
        observed = Observed(sandboxes=sandboxes)
        known: dict[str, ContainerObservation] = {}
        for raw in raw_containers:
            cached = self._known.get(raw.id)
            listed_state = list_state(raw.state)
            if cached is not None and cached.state == listed_state and listed_state != ContainerState.CREATED:
                obs = cached
            else:
                try:
                    obs = await cri.container_status(raw.id)
                except errors.NotFound:
                    continue
                if obs.state == ContainerState.EXITED and not obs.message:
                    message = await asyncio.to_thread(
                        self.volumes.termination_message, self.uid, obs.name, obs.attempt
                    )
                    if message:
                        obs = replace(obs, message=message)
            known[obs.id] = obs
            observed.sandbox_of[obs.id] = raw.pod_sandbox_id
            observed.containers.setdefault(obs.name, []).append(obs)
        for instances in observed.containers.values():
            instances.sort(
                key=lambda c: (c.attempt, c.created_at or datetime.min.replace(tzinfo=UTC)), reverse=True
            )
        self._known = known
        observed.fingerprint = fingerprint(raw_sandboxes, raw_containers)
        return observed


def fingerprint(raw_sandboxes: list[Any], raw_containers: list[Any]) -> frozenset[tuple[str, str]]:
    """What the relist compares: the IDs and states of a pod's runtime objects."""
    return frozenset(
        [(s.id, str(s.state)) for s in raw_sandboxes] + [(c.id, str(c.state)) for c in raw_containers]
    )


def list_state(value: int) -> ContainerState:
    return [ContainerState.CREATED, ContainerState.RUNNING, ContainerState.EXITED, ContainerState.UNKNOWN][
        value if 0 <= value <= 3 else 3
    ]
