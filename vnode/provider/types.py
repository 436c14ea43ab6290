"""Value types that cross layer boundaries: what the runtime observed, and what a pod worker decided.

These are plain frozen dataclasses with no library types in them, so that the status computation
(``vnode.runtime.status``), the HTTP layer (``vnode.api``) and the store (``vnode.store``) can share
them without importing gRPC, aiohttp or LMDB.

Times are timezone-aware UTC ``datetime`` values; ``None`` means "not set" (the CRI's 0).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class ContainerState(enum.Enum):
    """The CRI ``ContainerState`` values, by meaning."""

    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ContainerObservation:
    """One container instance as the runtime reports it (CRI ContainerStatus)."""

    id: str
    name: str
    attempt: int  # the restart count this instance was created with
    state: ContainerState
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    image: str = ""
    image_ref: str = ""
    log_path: str = ""
    spec_hash: str = ""  # io.kubernetes.container.hash, to tell a changed spec from a restart
    init: bool = False  # io.kubernetes.container.type == "init"


@dataclass(frozen=True)
class SandboxObservation:
    """A pod sandbox as the runtime reports it (CRI PodSandboxStatus)."""

    id: str
    ready: bool
    attempt: int = 0
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    created_at: datetime | None = None


@dataclass(frozen=True)
class Waiting:
    """Why a container is not running although the worker wants it to: a kubelet waiting reason.

    ``reason`` is one of kubelet's waiting reasons (``ContainerCreating``, ``ErrImagePull``,
    ``ImagePullBackOff``, ``CrashLoopBackOff``, ``CreateContainerError``,
    ``CreateContainerConfigError``, ``RunContainerError``, ``InvalidImageName``,
    ``ErrImageNeverPull``, ``PodInitializing``).
    """

    reason: str
    message: str = ""


@dataclass(frozen=True)
class ProbeState:
    """What a container's probes say of its current instance; None where it has no such probe
    (a running container is then started, and a started one ready)."""

    started: bool | None = None
    ready: bool | None = None


@dataclass(frozen=True)
class PodObservation:
    """Everything the status computation needs about one pod at one instant.

    ``containers`` maps a container name (init or regular) to its instances, newest first: the
    first is the current one, the second (if any) gives ``lastState``. ``waiting`` holds the
    worker's reason for a container that has no running instance it wants.
    """

    sandbox: SandboxObservation | None
    containers: dict[str, list[ContainerObservation]] = field(default_factory=dict)
    waiting: dict[str, Waiting] = field(default_factory=dict)
    host_ip: str = ""
    terminal: bool = False  # the worker has finished the pod (deleted, or a terminal phase reached)
    probes: dict[str, ProbeState] = field(default_factory=dict)  # by container name
