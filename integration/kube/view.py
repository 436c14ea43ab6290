"""One test's share of the session's real cluster: a namespace of its own, the nodes it starts,
and a cuttable link from each of them to the API servers.

Tests share one control plane (it takes a while to start); each leaves it as it found it:
``close`` force-removes the pods bound to the test's nodes (their kubelet is gone, so nothing else
would), the Node objects and the namespace.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from pathlib import Path
from typing import Any

from integration.kube.cluster import KubeCluster
from integration.kube.relay import Relay


class ClusterView:
    def __init__(self, kube: KubeCluster, namespace: str) -> None:
        self.kube = kube
        # unique: a namespace of an earlier run may still be terminating
        stem = re.sub(r"[^a-z0-9-]+", "-", namespace.lower())[:50].strip("-")
        self.namespace = f"{stem}-{secrets.token_hex(2)}"
        self.nodes: set[str] = set()
        self.relays: list[Relay] = []

    @property
    def kubeconfig(self) -> Path:
        return self.kube.admin_kubeconfig

    @property
    def urls(self) -> list[str]:
        return self.kube.urls

    async def open(self) -> ClusterView:
        await self.kube.kubectl("create", "namespace", self.namespace)

        async def account() -> bool:
            code, _, _ = await self.kube.kubectl_status(
                "-n", self.namespace, "get", "serviceaccount", "default"
            )
            return code == 0

        for _ in range(600):  # the service-account controller makes it within moments
            if await account():
                return self
            await asyncio.sleep(0.1)
        raise AssertionError(f"no default service account in {self.namespace}")

    def kubectl_args(self, args: tuple[str, ...]) -> list[str]:
        return ["-n", self.namespace, *args]

    def kubectl_argv(self, *args: str) -> list[str]:
        """The whole command line, for a kubectl the test runs itself (a follow, an exec)."""
        return self.kube.kubectl_argv(*self.kubectl_args(args))

    async def kubectl(
        self, *args: str, check: bool = True, stdin: bytes | None = None, timeout: float = 90
    ) -> str:
        return await self.kube.kubectl(*self.kubectl_args(args), check=check, stdin=stdin, timeout=timeout)

    async def kubectl_status(
        self, *args: str, stdin: bytes | None = None, timeout: float = 90
    ) -> tuple[int, str, str]:
        return await self.kube.kubectl_status(*self.kubectl_args(args), stdin=stdin, timeout=timeout)

    async def get_json(self, *args: str) -> Any:
        """The object(s) as JSON, or None when kubectl finds nothing."""
        out = await self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(out) if out.strip() else None

    def relay(self, master: int = 0) -> Relay:
        """A link to one API server that the test can cut and restore."""
        host, port = self.kube.urls[master].removeprefix("https://").split(":")
        relay = Relay(host, int(port))
        self.relays.append(relay)
        return relay

    def node_args(self, name: str = "edge1", servers: list[str] | None = None) -> list[str]:
        """A node of this cluster with its own credential (see ``KubeCluster.node_args``)."""
        self.nodes.add(name)
        return self.kube.node_args(name, servers)

    async def close(self) -> None:
        for relay in self.relays:
            await asyncio.to_thread(relay.close)
        for name in sorted(self.nodes):
            await self.kube.kubectl(
                "delete",
                "pods",
                "-A",
                f"--field-selector=spec.nodeName={name}",
                "--force",
                "--grace-period=0",
                "--wait=false",
                check=False,
            )
            await self.kube.kubectl("delete", "node", name, "--wait=false", check=False)
        await self.kube.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
