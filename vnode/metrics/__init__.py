"""Prometheus exposition: the node's resource metrics and vnode's own."""
