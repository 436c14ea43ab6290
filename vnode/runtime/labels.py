"""The CRI labels and annotations vnode writes, and reads back to re-adopt runtime objects.

The keys are kubelet's own (kubelet-facts (g)), so tools that know kubelet's conventions (crictl,
log shippers) read vnode's containers the same way. ``NODE_LABEL`` is vnode's addition: it marks
the sandboxes and containers this node manages, so that a containerd shared with another agent
never has its objects garbage-collected by vnode.
"""

from __future__ import annotations

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
NODE_LABEL = "vnode.io/node"

CONTAINER_HASH = "io.kubernetes.container.hash"
CONTAINER_RESTART_COUNT = "io.kubernetes.container.restartCount"
CONTAINER_TYPE = "io.kubernetes.container.type"
TERMINATION_MESSAGE_PATH = "io.kubernetes.container.terminationMessagePath"
TERMINATION_MESSAGE_POLICY = "io.kubernetes.container.terminationMessagePolicy"
CONTAINER_PORTS = "io.kubernetes.container.ports"
POD_TERMINATION_GRACE = "io.kubernetes.pod.terminationGracePeriod"
POD_DELETION_GRACE = "io.kubernetes.pod.deletionGracePeriod"

TYPE_INIT = "init"
TYPE_CONTAINER = "container"
