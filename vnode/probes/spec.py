"""A container's probes as kubelet reads them: type, handler, timing and thresholds, with the API's
defaults (period 10 s, timeout 1 s, success 1, failure 3), and the checks the API server would have
made for a static pod (which never went through one)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")


class ProbeType(enum.Enum):
    """The three probes, valued as kubelet names them in Events and metrics."""

    LIVENESS = "Liveness"
    READINESS = "Readiness"
    STARTUP = "Startup"

    @property
    def field(self) -> str:
        return f"{self.value.lower()}Probe"


class Result(enum.Enum):
    """A probe's outcome; ``metric`` is the ``result`` label of ``prober_probe_total``."""

    SUCCESS = "successful"
    FAILURE = "failed"
    UNKNOWN = "unknown"


# kubelet's initial results for a new container: not ready until proven, alive until proven
# otherwise, not started until the startup probe says so.
INITIAL = {
    ProbeType.READINESS: Result.FAILURE,
    ProbeType.LIVENESS: Result.SUCCESS,
    ProbeType.STARTUP: Result.UNKNOWN,
}


@dataclass(frozen=True)
class ProbeSpec:
    kind: ProbeType
    handler: str  # one of HANDLERS
    action: dict[str, Any]  # the handler's own fields
    initial_delay: int = 0
    period: int = 10
    timeout: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace: int | None = None  # the probe-level terminationGracePeriodSeconds


def probe_spec(container: dict[str, Any], kind: ProbeType) -> ProbeSpec | None:
    """The container's probe of ``kind`` (None when it has none). Assumes ``problems`` found none."""
    probe = container.get(kind.field)
    if not isinstance(probe, dict):
        return None
    handler = next(h for h in HANDLERS if h in probe)

    def number(name: str, default: int) -> int:
        value = probe.get(name)
        return default if value is None or value == 0 else int(value)

    return ProbeSpec(
        kind=kind,
        handler=handler,
        action=dict(probe[handler] or {}),
        initial_delay=int(probe.get("initialDelaySeconds") or 0),
        period=number("periodSeconds", 10),
        timeout=number("timeoutSeconds", 1),
        success_threshold=number("successThreshold", 1),
        failure_threshold=number("failureThreshold", 3),
        termination_grace=probe.get("terminationGracePeriodSeconds"),
    )


def problems(container: dict[str, Any], path: str) -> list[str]:
    """What the API server's validation says of the container's probes, ``field.path: message``."""
    found: list[str] = []
    for kind in ProbeType:
        probe = container.get(kind.field)
        if probe is None:
            continue
        where = f"{path}.{kind.field}"
        if not isinstance(probe, dict):
            found.append(f"{where}: must be an object")
            continue
        handlers = [h for h in HANDLERS if probe.get(h) is not None]
        if not handlers:
            found.append(f"{where}: Required value: must specify a handler type")
        elif len(handlers) > 1:
            found.append(f"{where}.{handlers[1]}: Forbidden: may not specify more than 1 handler type")
        for name in (
            "initialDelaySeconds",
            "periodSeconds",
            "timeoutSeconds",
            "successThreshold",
            "failureThreshold",
        ):
            value = probe.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                found.append(f"{where}.{name}: Invalid value: {value!r}: must be greater than or equal to 0")
        if kind != ProbeType.READINESS and probe.get("successThreshold") not in (None, 0, 1):
            found.append(f"{where}.successThreshold: Invalid value: {probe['successThreshold']!r}: must be 1")
        if kind == ProbeType.READINESS and probe.get("terminationGracePeriodSeconds") is not None:
            found.append(
                f"{where}.terminationGracePeriodSeconds: Invalid value: must not be set for readinessProbes"
            )
        grace = probe.get("terminationGracePeriodSeconds")
        if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 1):
            found.append(
                f"{where}.terminationGracePeriodSeconds: Invalid value: {grace!r}: must be greater than 0"
            )
        if handlers and handlers[0] == "exec" and not isinstance((probe["exec"] or {}).get("command"), list):
            found.append(f"{where}.exec.command: Required value")
        if handlers and handlers[0] in ("httpGet", "tcpSocket", "grpc"):
            port = (probe[handlers[0]] or {}).get("port")
            if port is None:
                found.append(f"{where}.{handlers[0]}.port: Required value")
            elif handlers[0] == "grpc" and (not isinstance(port, int) or not 0 < port < 65536):
                found.append(
                    f"{where}.grpc.port: Invalid value: {port!r}: must be between 1 and 65535, inclusive"
                )
    return found
