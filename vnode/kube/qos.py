"""A pod's QoS class, as the API server computes ``status.qosClass``."""

from __future__ import annotations

from typing import Any

from vnode.kube.quantity import parse_quantity


def qos_class(pod: dict[str, Any]) -> str:
    """Guaranteed, Burstable or BestEffort, as the API server computes ``status.qosClass``."""
    containers = [
        *(pod.get("spec", {}).get("initContainers") or []),
        *(pod.get("spec", {}).get("containers") or []),
    ]
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req = {k: parse_quantity(v) for k, v in (res.get("requests") or {}).items() if k in ("cpu", "memory")}
        lim = {k: parse_quantity(v) for k, v in (res.get("limits") or {}).items() if k in ("cpu", "memory")}
        for k, v in req.items():
            requests[k] = requests.get(k, 0) + v
        for k, v in lim.items():
            limits[k] = limits.get(k, 0) + v
        req = {**lim, **req}  # an unset request defaults to the limit
        if set(lim) != {"cpu", "memory"} or any(req.get(k) != lim[k] for k in lim):
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
