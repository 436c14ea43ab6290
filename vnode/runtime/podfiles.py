"""The files of a pod's API-backed volumes: configMaps, secrets, downward API, projected service
account tokens (requested from the API and refreshed at 80 % of their lifetime, as kubelet does)."""

from __future__ import annotations

import asyncio
from typing import Any

from vnode.provider.protocols import ObjectSource
from vnode.provider.types import SandboxObservation
from vnode.runtime import apiobjects, specs


def has_api_volumes(pod: dict[str, Any]) -> bool:
    volumes = pod.get("spec", {}).get("volumes") or []
    return any(kind in v for v in volumes for kind in apiobjects.API_VOLUME_KINDS)


class PodFiles:
    """For one pod: the objects it refers to and its volumes' contents; owns its tokens' cache."""

    def __init__(self, source: ObjectSource | None, node_name: str, host_ip: str) -> None:
        self.source = source  # None on a standalone node
        self.node_name = node_name
        self.host_ip = host_ip
        self._tokens: dict[tuple[str, int], tuple[str, float]] = {}  # -> (token, refresh at)

    async def objects(self, pod: dict[str, Any]) -> apiobjects.Objects | None:
        """The configMaps and secrets this pod refers to (None standalone)."""
        source = self.source
        if source is None:
            return None
        namespace = pod["metadata"].get("namespace", "default")
        refs = sorted(apiobjects.references(pod))
        found = await asyncio.gather(*(source.get_object(kind, namespace, name) for kind, name in refs))
        return dict(zip(refs, found, strict=True))

    async def volume_files(
        self, pod: dict[str, Any], objects: apiobjects.Objects | None, sandbox: SandboxObservation | None
    ) -> dict[str, dict[str, tuple[bytes, int]]] | None:
        """Contents of the pod's configMap, secret, downwardAPI and projected volumes."""
        source = self.source
        if objects is None or source is None:
            return None
        tokens: apiobjects.Tokens = {}
        now = asyncio.get_running_loop().time()
        for audience, seconds in apiobjects.token_requests(pod):
            cached = self._tokens.get((audience, seconds))
            if cached is None or now >= cached[1]:
                token, lifetime = await source.token(pod, audience, seconds)
                cached = (token, now + 0.8 * lifetime)  # kubelet refreshes at 80% of the lifetime
                self._tokens[(audience, seconds)] = cached
            tokens[(audience, seconds)] = cached[0]
        pod_ip = (sandbox.ip if sandbox is not None else "") or self.host_ip
        env_ctx = specs.EnvContext(pod, self.node_name, pod_ip, self.host_ip, [pod_ip])
        containers = {c["name"]: c for c in pod.get("spec", {}).get("containers") or []}

        def field(item: dict[str, Any]) -> str:
            if "fieldRef" in item:
                return specs.field_value(str(item["fieldRef"].get("fieldPath", "")), env_ctx)
            ref = item.get("resourceFieldRef") or {}
            return specs.resource_value(containers.get(str(ref.get("containerName", "")), {}), ref)

        return apiobjects.volume_files(pod, objects, tokens, field)
