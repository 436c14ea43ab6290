"""A real Kubernetes control plane for vnode's tests (see ``cluster``), built from its Go modules."""

from integration.kube.cluster import KubeCluster, binaries, kubeconfig
from integration.kube.relay import Relay

__all__ = ["KubeCluster", "Relay", "binaries", "kubeconfig"]
