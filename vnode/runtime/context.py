"""What every pod worker shares: the runtime, the node's identity and the collaborators.

A module of its own because the worker and the two halves it delegates to (``starts``: bringing
containers up; ``teardown``: taking them down) all read it, and the pod manager and the wiring
build it; none of them should have to import the others for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vnode.probes.manager import Prober
from vnode.provider.protocols import EventSink, ObjectSource
from vnode.runtime import specs
from vnode.runtime.backoff import Backoff
from vnode.runtime.cgroups import CgroupDriver
from vnode.runtime.cri import CriClient
from vnode.runtime.volumes import VolumeManager


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
