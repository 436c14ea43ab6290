"""The narrow protocols between the HTTP layer and whatever runs pods.

The kubelet API (``vnode.api``) is built from these callables and nothing else, so that a fake
in-process runtime (scale benchmarks), the CRI runtime and, later, other providers serve the same
endpoints. Optional capabilities (exec, attach, port-forward, stats) are separate protocols; an
endpoint whose capability is absent is not registered at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class LogTarget:
    """Where a container's log lives, and how to tell when following it should end."""

    path: str
    # True while the container may still write to ``path``; ``follow`` stops once it is False.
    is_running: Callable[[], Awaitable[bool]]


class PodLister(Protocol):
    """Serves ``/pods``: the pods bound to this node, as v1 Pod dicts with their status."""

    def list_pods(self) -> list[dict[str, Any]]: ...


class LogLocator(Protocol):
    """Serves ``/containerLogs``: finds the log file of a container instance.

    Raises ``NotFound`` for an unknown pod or container (404) and ``InvalidInput`` when the
    container has no log to read yet or no previous instance (400, as kubelet answers).
    """

    async def locate_log(self, namespace: str, pod: str, container: str, previous: bool) -> LogTarget: ...


@dataclass(frozen=True)
class StreamOptions:
    """Which standard streams an exec or attach session carries (kubelet's remotecommand options)."""

    stdin: bool = False
    stdout: bool = True
    stderr: bool = True
    tty: bool = False


class StreamProvider(Protocol):
    """Serves ``/exec``, ``/attach``, ``/portForward`` and ``/run`` (``run_sync``).

    The ``*_url`` calls return the runtime's single-use streaming URL (CRI Exec/Attach/PortForward);
    the HTTP layer proxies the client's upgraded connection to it. ``uid`` is the optional path
    segment: when given it must match the pod. Unknown pod or container -> ``NotFound``; a container
    that is not running -> ``InvalidInput``.
    """

    async def exec_url(
        self,
        namespace: str,
        pod: str,
        uid: str | None,
        container: str,
        command: list[str],
        options: StreamOptions,
    ) -> str: ...

    async def attach_url(
        self, namespace: str, pod: str, uid: str | None, container: str, options: StreamOptions
    ) -> str: ...

    async def port_forward_url(self, namespace: str, pod: str, uid: str | None, ports: list[int]) -> str: ...

    async def run_sync(
        self, namespace: str, pod: str, uid: str | None, container: str, command: list[str]
    ) -> tuple[bytes, bytes, int]: ...


# A health check: returns None when healthy, raises any exception with a reason when not.
HealthCheck = Callable[[], Awaitable[None]]


class EventSink(Protocol):
    """Where pod Events go (kubelet's EventRecorder).

    ``obj`` is the involved object (a v1 Pod dict), ``type_`` ``Normal`` or ``Warning``, ``reason``
    one of kubelet's event reasons (Pulling, Pulled, Failed, Created, Started, Killing, BackOff,
    FailedMount, ...). Recording never blocks and never raises: standalone it is a bounded log, with
    a control plane it is posted (rate-limited and aggregated) by the controllers.
    """

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None: ...


class ObjectSource(Protocol):
    """The configMaps and secrets pods refer to, from the control plane (cluster mode only).

    ``kind`` is the plural resource (``configmaps``, ``secrets``). Returns None when the object does
    not exist; raises ``Unavailable`` when it can't be known (no master reachable, nothing cached).
    """

    async def get_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def watched(self, kind: str, namespace: str, name: str) -> bool:
        """Whether a watch keeps the object current (its changes then wake the pods using it, and
        their files need no periodic refresh)."""
        ...

    async def token(self, pod: dict[str, Any], audience: str, expiration_seconds: int) -> tuple[str, float]:
        """A service-account token bound to ``pod`` (TokenRequest), with its lifetime in seconds."""
        ...


class ObjectReader(Protocol):
    """The configMaps, secrets and services the node keeps, for the read-only local API.

    ``kind`` is the plural resource (``configmaps``, ``secrets``, ``services``); ``namespace=None``
    lists every namespace. In cluster mode the durable object cache is the reader (the objects the
    node's pods reference, as last known); standalone, an empty one. Reads are synchronous and
    never reach the control plane: the cache answers from the local store.
    """

    def list_objects(self, kind: str, namespace: str | None) -> list[dict[str, Any]]: ...

    def read_object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...


# -- the seams between the controllers and the pod manager --------------------------------------


class PodLifecycle(Protocol):
    """The pod manager as the controllers see it (virtual-kubelet's pod lifecycle side): pods in
    by source, statuses out, and a notification per pod whose status or worker changed."""

    async def set_source_pods(self, source: str, pods: list[dict[str, Any]]) -> None: ...

    def status_of(self, uid: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(pod, status) while a worker has the pod, else None."""
        ...

    def source_of(self, uid: str) -> str | None: ...

    def known_uids(self) -> list[str]:
        """Every pod that has a worker."""
        ...

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """``callback(uid)`` whenever a pod's status changes or its worker ends."""
        ...


class ApiPodView(Protocol):
    """The API's pods as the informer last saw them (the notifier side): what the status writer
    compares its writes with, and the mirror pods it keeps for static pods."""

    def pod(self, uid: str) -> dict[str, Any] | None: ...

    def api_status(self, uid: str) -> dict[str, Any] | None: ...

    def mirror(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def on_listed(self, callback: Callable[[], None]) -> None:
        """``callback()`` after every full list (at start and after an outage or failover)."""
        ...

    def on_mirrors_changed(self, callback: Callable[[], None]) -> None: ...
