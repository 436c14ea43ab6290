"""``kubectl get`` output as the API server serves it: meta.k8s.io/v1 Tables with kubectl's columns
for pods and nodes (and name and age for the rest), and its ages (HumanDuration)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any


def human_age(seconds: float) -> str:
    """kubectl's HumanDuration: ``45s``, ``5m3s``, ``2h10m``, ``3d4h``, ``400d``."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 120:
        return f"{max(s, 0)}s"
    m, h, d = s // 60, s // 3600, s // 86400
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y{d % 365}d" if d < 365 * 8 else f"{d // 365}y"


def _age(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    return human_age((now - then).total_seconds())


def pod_status_text(pod: dict[str, Any]) -> str:
    """The STATUS column as kubectl prints it (the main cases of its printPod)."""
    st, spec = pod.get("status") or {}, pod.get("spec") or {}
    reason = st.get("reason") or st.get("phase") or "Pending"
    inits = spec.get("initContainers") or []
    for i, c in enumerate(st.get("initContainerStatuses") or []):
        state = c.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        if terminated:
            reason = "Init:" + (terminated.get("reason") or f"ExitCode:{terminated.get('exitCode')}")
        elif waiting and waiting.get("reason") not in (None, "PodInitializing"):
            reason = f"Init:{waiting['reason']}"
        else:
            reason = f"Init:{i}/{len(inits)}"
        break
    else:
        running = False
        for c in reversed(st.get("containerStatuses") or []):
            state = c.get("state") or {}
            if (state.get("waiting") or {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif state.get("terminated"):
                t = state["terminated"]
                reason = t.get("reason") or f"ExitCode:{t.get('exitCode')}"
            elif "running" in state and c.get("ready"):
                running = True
        if reason == "Completed" and running:
            reason = "Running"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return str(reason)


def pod_cells(pod: dict[str, Any], now: datetime) -> list[Any]:
    meta, st, spec = pod.get("metadata") or {}, pod.get("status") or {}, pod.get("spec") or {}
    statuses = st.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    finished = [
        t["finishedAt"]
        for c in statuses
        if (t := (c.get("lastState") or {}).get("terminated")) and t.get("finishedAt")
    ]
    restart_text = f"{restarts} ({_age(max(finished), now)} ago)" if restarts and finished else str(restarts)
    return [
        meta.get("name", ""),
        f"{ready}/{len(spec.get('containers') or [])}",
        pod_status_text(pod),
        restart_text,
        _age(meta.get("creationTimestamp"), now),
        st.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
    ]


def node_cells(node: dict[str, Any], now: datetime) -> list[Any]:
    meta, st = node.get("metadata") or {}, node.get("status") or {}
    ready = next((c.get("status") for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = {"True": "Ready", "False": "NotReady"}.get(str(ready), "Unknown")
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k.removeprefix(prefix) for k in meta.get("labels") or {} if k.startswith(prefix))
    addresses = {a.get("type"): a.get("address") for a in st.get("addresses") or []}
    info = st.get("nodeInfo") or {}
    return [
        meta.get("name", ""),
        state,
        ",".join(r for r in roles if r) or "<none>",
        _age(meta.get("creationTimestamp"), now),
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP") or "<none>",
        addresses.get("ExternalIP") or "<none>",
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _generic_cells(obj: dict[str, Any], now: datetime) -> list[Any]:
    meta = obj.get("metadata") or {}
    return [meta.get("name", ""), _age(meta.get("creationTimestamp"), now)]


_NAME = "The object's name."
COLUMNS: dict[str, list[tuple[str, str, int]]] = {  # kind -> (name, type, priority); 1 shows with -o wide
    "Pod": [("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "string", 0),
            ("Age", "string", 0), ("IP", "string", 1), ("Node", "string", 1)],
    "Node": [("Name", "string", 0), ("Status", "string", 0), ("Roles", "string", 0), ("Age", "string", 0),
             ("Version", "string", 0), ("Internal-IP", "string", 1), ("External-IP", "string", 1),
             ("OS-Image", "string", 1), ("Kernel-Version", "string", 1), ("Container-Runtime", "string", 1)],
}  # fmt: skip
CELLS: dict[str, Callable[[dict[str, Any], datetime], list[Any]]] = {"Pod": pod_cells, "Node": node_cells}


def wants_table(accept: str) -> bool:
    """kubectl get asks for ``application/json;as=Table;v=v1;g=meta.k8s.io`` (then plain JSON)."""
    return any(
        "as=Table" in part and "g=meta.k8s.io" in part and "v=v1beta1" not in part
        for part in accept.split(",")
    )


def table(
    kind: str, objects: list[dict[str, Any]], rv: str, now: datetime, *, columns: bool = True
) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table; ``rows[].object`` is the row's PartialObjectMetadata."""
    cells = CELLS.get(kind, _generic_cells)
    result: dict[str, Any] = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
    }
    if columns:
        result["columnDefinitions"] = [
            {
                "name": name,
                "type": type_,
                "format": "name" if name == "Name" else "",
                "description": _NAME if name == "Name" else "",
                "priority": priority,
            }
            for name, type_, priority in COLUMNS.get(kind, [("Name", "string", 0), ("Age", "string", 0)])
        ]
    result["rows"] = [
        {
            "cells": cells(o, now),
            "object": {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o.get("metadata") or {},
            },
        }
        for o in objects
    ]
    return result
