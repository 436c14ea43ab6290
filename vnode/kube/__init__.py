"""Kubernetes semantics with no I/O: quantities, image references and pull policy, QoS classes,
eviction thresholds, kubelet's TLS names. Every layer may use them; they use nothing of vnode's
but ``vnode.errors``."""
