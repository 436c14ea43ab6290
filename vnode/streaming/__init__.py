"""Streaming sessions of the kubelet API: exec, attach and port-forward.

Like kubelet with a CRI runtime, vnode asks the runtime for a single-use URL on the runtime's own
streaming server and proxies the client's upgraded connection to it (``proxy``). SPDY/3.1 and
WebSocket v4 connections pass through byte for byte; a WebSocket ``v5.channel.k8s.io`` session,
which containerd 1.6 refuses, is terminated here and replayed to the runtime over SPDY
(``translate``, using the SPDY/3.1 client in ``spdy``) so that v5's stdin close reaches the process.
"""
