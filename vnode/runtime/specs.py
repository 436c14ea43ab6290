"""Pod spec -> CRI requests: the sandbox and container configs kubelet would send for a pod.

Pure functions of the pod (and of the node's DNS settings): no I/O except reading
``/etc/resolv.conf`` and ``/proc/meminfo`` once at start-up, so the whole mapping is unit-testable.
The labels and annotations written here are what a restarted vnode reads back to re-adopt
containers (see ``vnode.runtime.labels``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cri_api.v1 import api_pb2

from vnode import errors
from vnode.kube.envvars import expand
from vnode.kube.qos import qos_class
from vnode.kube.quantity import milli_cpu, parse_quantity, to_bytes
from vnode.runtime import apiobjects, labels

CPU_PERIOD = 100_000  # kubelet's quotaPeriod (100 ms)
MIN_SHARES = 2
MIN_QUOTA = 1000
NDOTS = 5
MAX_DNS_SEARCHES = 32

_NAMESPACE_NODE = api_pb2.NODE
_NAMESPACE_POD = api_pb2.POD
_NAMESPACE_CONTAINER = api_pb2.CONTAINER
_PROTOCOLS = {"TCP": api_pb2.TCP, "UDP": api_pb2.UDP, "SCTP": api_pb2.SCTP}
_PROPAGATION = {
    None: api_pb2.PROPAGATION_PRIVATE,
    "None": api_pb2.PROPAGATION_PRIVATE,
    "HostToContainer": api_pb2.PROPAGATION_HOST_TO_CONTAINER,
    "Bidirectional": api_pb2.PROPAGATION_BIDIRECTIONAL,
}


# -- identity and hashing ---------------------------------------------------------------------


def container_hash(container: dict[str, Any]) -> str:
    """A stable hash of a container's spec: a running container whose hash differs is restarted."""
    canonical = json.dumps(container, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def pod_log_dir(logs_dir: Path, pod: dict[str, Any]) -> Path:
    """kubelet's ``/var/log/pods/<namespace>_<name>_<uid>`` layout."""
    meta = pod["metadata"]
    return Path(logs_dir) / f"{meta.get('namespace', 'default')}_{meta['name']}_{meta['uid']}"


def _pod_labels(pod: dict[str, Any]) -> dict[str, str]:
    meta = pod["metadata"]
    return {
        labels.POD_NAME: meta["name"],
        labels.POD_NAMESPACE: meta.get("namespace", "default"),
        labels.POD_UID: meta["uid"],
    }


# -- DNS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DNSSettings:
    """The node's DNS inputs: the cluster's resolver (if any) and the host's resolv.conf."""

    cluster_domain: str = "cluster.local"
    cluster_dns: list[str] = field(default_factory=list)
    host_servers: list[str] = field(default_factory=list)
    host_searches: list[str] = field(default_factory=list)
    host_options: list[str] = field(default_factory=list)


def read_resolv_conf(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(nameservers, search domains, options) of a resolv.conf; empty lists if it is missing."""
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    try:
        text = Path(path).read_text()
    except OSError:
        return servers, searches, options
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if not fields:
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver" and values:
            servers.append(values[0])
        elif key in ("search", "domain"):
            searches = list(values)
        elif key == "options":
            options.extend(values)
    return servers, searches, options


def dns_config(pod: dict[str, Any], dns: DNSSettings) -> Any:
    """kubelet's DNS policy: ClusterFirst(WithHostNet), Default, None, merged with ``dnsConfig``."""
    spec = pod.get("spec", {})
    meta = pod["metadata"]
    policy = spec.get("dnsPolicy", "ClusterFirst")
    host_network = bool(spec.get("hostNetwork"))
    cluster = policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and not host_network)
    servers: list[str]
    searches: list[str]
    options: list[str]
    if policy == "None":
        servers, searches, options = [], [], []
    elif cluster and dns.cluster_dns:
        namespace = meta.get("namespace", "default")
        domain = dns.cluster_domain
        servers = list(dns.cluster_dns)
        searches = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain, *dns.host_searches]
        options = [f"ndots:{NDOTS}"]
    else:
        servers, searches, options = list(dns.host_servers), list(dns.host_searches), list(dns.host_options)
    extra = spec.get("dnsConfig") or {}
    servers += [s for s in extra.get("nameservers") or [] if s not in servers]
    searches += [s for s in extra.get("searches") or [] if s not in searches]
    for option in extra.get("options") or []:
        name = option.get("name", "")
        value = option.get("value")
        options = [o for o in options if o.split(":", 1)[0] != name]
        options.append(f"{name}:{value}" if value is not None else name)
    return api_pb2.DNSConfig(servers=servers, searches=searches[:MAX_DNS_SEARCHES], options=options)


# -- the sandbox ------------------------------------------------------------------------------


def _namespace_options(spec: dict[str, Any]) -> Any:
    return api_pb2.NamespaceOption(
        network=_NAMESPACE_NODE if spec.get("hostNetwork") else _NAMESPACE_POD,
        pid=_NAMESPACE_NODE
        if spec.get("hostPID")
        else (_NAMESPACE_POD if spec.get("shareProcessNamespace") else _NAMESPACE_CONTAINER),
        ipc=_NAMESPACE_NODE if spec.get("hostIPC") else _NAMESPACE_POD,
    )


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def sandbox_config(pod: dict[str, Any], *, log_dir: Path, attempt: int, dns: DNSSettings) -> Any:
    """The ``PodSandboxConfig`` for ``pod`` (kubelet's generatePodSandboxConfig)."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    pod_security = spec.get("securityContext") or {}
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=meta["name"], namespace=meta.get("namespace", "default"), uid=meta["uid"], attempt=attempt
        ),
        log_directory=str(log_dir),
        dns_config=dns_config(pod, dns),
        labels={**(meta.get("labels") or {}), **_pod_labels(pod)},
        annotations=dict(meta.get("annotations") or {}),
    )
    if not spec.get("hostNetwork"):
        config.hostname = str(spec.get("hostname") or meta["name"])[:63].rstrip("-.")
    for container in _containers(spec):
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                config.port_mappings.append(
                    api_pb2.PortMapping(
                        protocol=_PROTOCOLS.get(port.get("protocol", "TCP"), api_pb2.TCP),
                        container_port=int(port["containerPort"]),
                        host_port=int(port["hostPort"]),
                        host_ip=str(port.get("hostIP", "")),
                    )
                )
    security = config.linux.security_context
    security.namespace_options.CopyFrom(_namespace_options(spec))
    security.privileged = any(
        (c.get("securityContext") or {}).get("privileged", False) for c in _containers(spec)
    )
    if pod_security.get("runAsUser") is not None:
        security.run_as_user.value = int(pod_security["runAsUser"])
    if pod_security.get("runAsGroup") is not None:
        security.run_as_group.value = int(pod_security["runAsGroup"])
    security.supplemental_groups.extend(int(g) for g in pod_security.get("supplementalGroups") or [])
    config.linux.sysctls.update({s["name"]: str(s["value"]) for s in pod_security.get("sysctls") or []})
    return config


# -- environment --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvContext:
    """What ``fieldRef`` and ``resourceFieldRef`` values are resolved against."""

    pod: dict[str, Any]
    node_name: str
    pod_ip: str
    host_ip: str
    pod_ips: list[str]


def field_value(path: str, ctx: EnvContext) -> str:
    """The value of a downward-API field path (kubelet's podFieldSelectorRuntimeValue)."""
    meta, spec = ctx.pod["metadata"], ctx.pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName") or ctx.node_name,
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": ctx.pod_ip,
        "status.podIPs": ",".join(ip for ip in ctx.pod_ips if ip),
        "status.hostIP": ctx.host_ip,
        "status.hostIPs": ctx.host_ip,
    }
    if path in simple:
        return str(simple[path])
    for prefix, mapping in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(mapping) or {}).get(path[len(prefix) + 2 : -2], ""))
    raise errors.InvalidInput(f"unsupported fieldRef fieldPath {path!r}")


def resource_value(container: dict[str, Any], ref: dict[str, Any], node: NodeCapacity | None = None) -> str:
    """A ``resourceFieldRef`` value: the limit (node capacity when unset) or request, over ``divisor``."""
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    node = node or _capacity()
    resources = container.get("resources") or {}
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor <= 0:
        raise errors.InvalidInput(f"resourceFieldRef {resource}: divisor must be positive")
    values = resources.get(kind) or {}
    if name not in ("cpu", "memory", "ephemeral-storage") or kind not in ("limits", "requests"):
        raise errors.InvalidInput(f"unsupported resourceFieldRef resource {resource!r}")
    if name in values:
        amount = parse_quantity(values[name])
    elif kind == "requests" and name in (resources.get("limits") or {}):
        amount = parse_quantity(resources["limits"][name])
    elif kind == "requests":
        amount = parse_quantity(0)
    else:
        amount = parse_quantity(node.cpus if name == "cpu" else node.memory)
    return str(math.ceil(amount / divisor))


def resolve_env(
    container: dict[str, Any], ctx: EnvContext, objects: apiobjects.Objects | None = None
) -> dict[str, str]:
    """The container's environment: ``envFrom`` first, then ``env`` in order, with references to
    earlier variables expanded. ``objects`` holds the configMaps and secrets the pod refers to
    (None on a standalone node, where such references are refused)."""
    namespace = ctx.pod["metadata"].get("namespace", "default")
    env: dict[str, str] = {}
    if container.get("envFrom"):
        if objects is None:
            raise errors.InvalidInput("envFrom needs the API server, which this node does not have")
        env.update(apiobjects.env_from_objects(container, namespace, objects))
    for item in container.get("env") or []:
        name = item["name"]
        source = item.get("valueFrom")
        if source is None:
            env[name] = expand(str(item.get("value", "")), env)
        elif "fieldRef" in source:
            env[name] = field_value(str(source["fieldRef"].get("fieldPath", "")), ctx)
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"])
        elif objects is not None and ("configMapKeyRef" in source or "secretKeyRef" in source):
            value = apiobjects.key_ref(source, namespace, objects)
            if value is not None:
                env[name] = value
        else:
            kind = next(iter(source), "valueFrom")
            raise errors.InvalidInput(
                f"env {name}: {kind} needs the API server, which this node does not have"
            )
    return env


# -- the container ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCapacity:
    """The node's CPU count and memory, for defaults that depend on them (OOM score, env)."""

    cpus: int
    memory: int

    @staticmethod
    def read() -> NodeCapacity:
        memory = 0
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        memory = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
        return NodeCapacity(cpus=os.cpu_count() or 1, memory=memory)


def volume_mounts(container: dict[str, Any], volume_paths: dict[str, Path]) -> list[Any]:
    """CRI mounts for ``volumeMounts``, with ``subPath`` resolved inside its volume."""
    mounts = []
    for mount in container.get("volumeMounts") or []:
        name = mount["name"]
        if name not in volume_paths:
            raise errors.InvalidInput(f'volume "{name}" is not prepared')
        host = Path(volume_paths[name])
        sub = str(mount.get("subPath") or "")
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise errors.InvalidInput(f"subPath {sub!r} must be a relative path without '..'")
            host = host / sub
            if not host.exists():
                host.mkdir(parents=True, exist_ok=True)
        mounts.append(
            api_pb2.Mount(
                container_path=str(mount["mountPath"]),
                host_path=str(host),
                readonly=bool(mount.get("readOnly", False)),
                propagation=_PROPAGATION.get(mount.get("mountPropagation"), api_pb2.PROPAGATION_PRIVATE),
            )
        )
    return mounts


def oom_score_adj(pod: dict[str, Any], container: dict[str, Any], capacity: NodeCapacity) -> int:
    """kubelet's per-QoS OOM score: -997 Guaranteed, 1000 BestEffort, scaled by request between."""
    qos = qos_class(pod)
    if qos == "Guaranteed":
        return -997
    if qos == "BestEffort":
        return 1000
    request = (container.get("resources") or {}).get("requests", {}).get("memory")
    if request is None or not capacity.memory:
        return 999
    score = 1000 - (1000 * to_bytes(request)) // capacity.memory
    return int(min(max(score, 2), 999))


def linux_resources(pod: dict[str, Any], container: dict[str, Any], capacity: NodeCapacity) -> Any:
    """CPU shares from the request, CFS quota and memory limit from the limits."""
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    cpu_request = requests.get("cpu", limits.get("cpu"))
    shares = MIN_SHARES if cpu_request is None else max(MIN_SHARES, milli_cpu(cpu_request) * 1024 // 1000)
    resources = api_pb2.LinuxContainerResources(
        cpu_shares=shares, oom_score_adj=oom_score_adj(pod, container, capacity)
    )
    if "cpu" in limits:
        resources.cpu_period = CPU_PERIOD
        resources.cpu_quota = max(MIN_QUOTA, milli_cpu(limits["cpu"]) * CPU_PERIOD // 1000)
    if "memory" in limits:
        resources.memory_limit_in_bytes = to_bytes(limits["memory"])
    return resources


def container_config(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    kind: Literal["init", "container"],
    restart_count: int,
    image_ref: str,
    env: dict[str, str],
    mounts: list[Any],
    termination_log_host_path: Path | None,
    capacity: NodeCapacity | None = None,
) -> Any:
    """The ``ContainerConfig`` for one container instance (kubelet's generateContainerConfig)."""
    spec = pod.get("spec", {})
    meta = pod["metadata"]
    name = container["name"]
    capacity = capacity or _capacity()
    message_path = str(container.get("terminationMessagePath") or "/dev/termination-log")
    annotations = {
        labels.CONTAINER_HASH: container_hash(container),
        labels.CONTAINER_RESTART_COUNT: str(restart_count),
        labels.CONTAINER_TYPE: kind,
        labels.TERMINATION_MESSAGE_PATH: message_path,
        labels.TERMINATION_MESSAGE_POLICY: str(container.get("terminationMessagePolicy") or "File"),
        labels.POD_TERMINATION_GRACE: str(spec.get("terminationGracePeriodSeconds", 30)),
    }
    if container.get("ports"):
        annotations[labels.CONTAINER_PORTS] = json.dumps(container["ports"], separators=(",", ":"))
    if meta.get("deletionGracePeriodSeconds") is not None:
        annotations[labels.POD_DELETION_GRACE] = str(meta["deletionGracePeriodSeconds"])
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=restart_count),
        image=api_pb2.ImageSpec(image=image_ref),
        command=[expand(c, env) for c in container.get("command") or []],
        args=[expand(a, env) for a in container.get("args") or []],
        working_dir=str(container.get("workingDir") or ""),
        envs=[api_pb2.KeyValue(key=k, value=v) for k, v in env.items()],
        mounts=list(mounts),
        log_path=f"{name}/{restart_count}.log",
        stdin=bool(container.get("stdin", False)),
        stdin_once=bool(container.get("stdinOnce", False)),
        tty=bool(container.get("tty", False)),
        labels={**_pod_labels(pod), labels.CONTAINER_NAME: name},
        annotations=annotations,
    )
    if termination_log_host_path is not None:
        config.mounts.append(
            api_pb2.Mount(container_path=message_path, host_path=str(termination_log_host_path))
        )
    config.linux.resources.CopyFrom(linux_resources(pod, container, capacity))
    _container_security(config.linux.security_context, spec, container)
    return config


def _container_security(security: Any, spec: dict[str, Any], container: dict[str, Any]) -> None:
    pod_sc = spec.get("securityContext") or {}
    sc = container.get("securityContext") or {}
    security.namespace_options.CopyFrom(_namespace_options(spec))
    security.privileged = bool(sc.get("privileged", False))
    security.readonly_rootfs = bool(sc.get("readOnlyRootFilesystem", False))
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    if user is not None:
        security.run_as_user.value = int(user)
    group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    if group is not None:
        security.run_as_group.value = int(group)
    security.supplemental_groups.extend(int(g) for g in pod_sc.get("supplementalGroups") or [])
    if sc.get("allowPrivilegeEscalation") is False:
        security.no_new_privs = True
    caps = sc.get("capabilities") or {}
    security.capabilities.add_capabilities.extend(_capability(c) for c in caps.get("add") or [])
    security.capabilities.drop_capabilities.extend(_capability(c) for c in caps.get("drop") or [])


def _capability(name: str) -> str:
    name = str(name).upper()
    return name if name.startswith("CAP_") or name == "ALL" else f"CAP_{name}"


_CAPACITY: NodeCapacity | None = None


def _capacity() -> NodeCapacity:
    global _CAPACITY
    if _CAPACITY is None:
        _CAPACITY = NodeCapacity.read()
    return _CAPACITY
