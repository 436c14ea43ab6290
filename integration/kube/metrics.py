"""metrics-server v0.8.0 for the test cluster, run as a host process: ``kubectl top`` against the
nodes' ``/metrics/resource``.

The aggregation layer reaches an extension API server through its Service's endpoints, and an
endpoint may not be a loopback address (the API server refuses 127.0.0.0/8). So metrics-server
listens on the host's own non-loopback address (the default route's interface) and the harness
creates, in ``kube-system``: a Service without a selector and its Endpoints pointing there (the
controller-manager mirrors them into an EndpointSlice), the ``v1beta1.metrics.k8s.io``
APIService with the cluster CA as ``caBundle`` (metrics-server serves a certificate from that CA
for ``metrics-server.kube-system.svc`` and the address), and the RBAC of its release manifest:
``nodes/metrics`` and reads of pods and nodes, ``system:auth-delegator`` and
``extension-apiserver-authentication-reader``. It talks to the API server as
``system:metrics-server`` (a client certificate of the cluster CA) and to the kubelets with the
same certificate, verifying their serving certificates with the cluster CA
(``--kubelet-certificate-authority``, never ``--kubelet-insecure-tls``), at the node's InternalIP
and the port its status declares.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from integration.kube.cluster import KubeCluster, Proc, free_port, kubeconfig
from vnode.aiokits.hostinfo import primary_ipv4

USER = "system:metrics-server"
NAMESPACE = "kube-system"
SERVICE = "metrics-server"
RESOLUTION = "15s"  # must exceed --kubelet-request-timeout (10s); a rate needs two scrapes


def host_address() -> str:
    """A local address the API server may route to (not loopback)."""
    address = primary_ipv4()
    if address.startswith("127."):
        raise RuntimeError("metrics-server needs a non-loopback address: this host has no default route")
    return address


class MetricsServer:
    """``start()`` registers and runs it; ``stop()`` ends the process and removes what it created."""

    def __init__(self, kube: KubeCluster, base: Path) -> None:
        self.kube = kube
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.address = host_address()
        self.port = free_port()
        self.proc: Proc | None = None

    def objects(self) -> list[dict[str, object]]:
        ca_bundle = base64.b64encode(self.kube.ca_cert.read_bytes()).decode()
        rbac = "rbac.authorization.k8s.io"

        def binding(kind: str, name: str, role_kind: str, role: str) -> dict[str, object]:
            meta = {"name": name, **({"namespace": NAMESPACE} if kind == "RoleBinding" else {})}
            return {"apiVersion": f"{rbac}/v1", "kind": kind, "metadata": meta,
                    "roleRef": {"apiGroup": rbac, "kind": role_kind, "name": role},
                    "subjects": [{"apiGroup": rbac, "kind": "User", "name": USER}]}  # fmt: skip

        return [
            {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole", "metadata": {"name": USER},
             "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                       {"apiGroups": [""], "resources": ["pods", "nodes"],
                        "verbs": ["get", "list", "watch"]}]},
            binding("ClusterRoleBinding", USER, "ClusterRole", USER),
            binding("ClusterRoleBinding", "metrics-server:system:auth-delegator", "ClusterRole",
                    "system:auth-delegator"),
            binding("RoleBinding", "metrics-server-auth-reader", "Role",
                    "extension-apiserver-authentication-reader"),
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
             "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": self.port}]}},
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
             "subsets": [{"addresses": [{"ip": self.address}],
                          "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]}]},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": "v1beta1.metrics.k8s.io"},
             "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "caBundle": ca_bundle,
                      "service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443},
                      "groupPriorityMinimum": 100, "versionPriority": 100}},
        ]  # fmt: skip

    def argv(self) -> list[str]:
        pki = self.kube.pki
        client_cert, client_key = pki.ca.issue("metrics-server-client", USER)
        serving_cert, serving_key = pki.ca.issue(
            "metrics-server-serving",
            SERVICE,
            client=False,
            server_names=(f"{SERVICE}.{NAMESPACE}.svc", self.address),
        )
        config = kubeconfig(self.base / "metrics-server.kubeconfig", [self.kube.urls[-1]], self.kube.ca_cert,
                            client_cert, client_key)  # fmt: skip
        return [
            str(self.kube.bin / "metrics-server"),
            f"--bind-address={self.address}",
            f"--secure-port={self.port}",
            f"--tls-cert-file={serving_cert}",
            f"--tls-private-key-file={serving_key}",
            f"--kubeconfig={config}",
            f"--authentication-kubeconfig={config}",
            f"--authorization-kubeconfig={config}",
            f"--kubelet-certificate-authority={self.kube.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--kubelet-use-node-status-port",
            f"--metric-resolution={RESOLUTION}",
            "--v=2",
        ]

    async def start(self) -> None:
        body = {"apiVersion": "v1", "kind": "List", "items": self.objects()}
        await self.kube.kubectl("apply", "-f", "-", stdin=json.dumps(body).encode())
        self.proc = Proc("metrics-server", self.argv(), self.base / "metrics-server.log")
        self.proc.start()

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.end()
        kubectl = self.kube.kubectl
        await kubectl("delete", "apiservice", "v1beta1.metrics.k8s.io", "--wait=false", check=False)
        await kubectl("-n", NAMESPACE, "delete", "service,endpoints", SERVICE, "--wait=false", check=False)
        await kubectl("-n", NAMESPACE, "delete", "rolebinding", "metrics-server-auth-reader", check=False)
        await kubectl(
            "delete", "clusterrolebinding", USER, "metrics-server:system:auth-delegator", check=False
        )
        await kubectl("delete", "clusterrole", USER, check=False)

    def log_tail(self) -> str:
        return self.proc.tail() if self.proc is not None else ""
