"""vnode: a Kubernetes node for the edge.

One process that runs the pods bound to a machine on containerd (CRI over gRPC),
keeps what it needs in LMDB so that it survives restarts and control-plane outages,
and serves the kubelet HTTPS API.
"""

__version__ = "0.1.0"
