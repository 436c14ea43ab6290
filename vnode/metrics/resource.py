"""``/metrics/resource`` in the text format kubelet serves and metrics-server (0.6 and later) reads.

metrics-server's rules, which this follows: it reads ``node_cpu_usage_seconds_total``,
``node_memory_working_set_bytes``, ``container_cpu_usage_seconds_total``,
``container_memory_working_set_bytes`` and ``container_start_time_seconds``; it finds a container
by its ``container``, ``pod`` and ``namespace`` labels; it takes each sample's explicit millisecond
timestamp as the time of the reading (rates come from two of them); and it drops a whole pod when
any of its containers reports 0 CPU or 0 memory, and the node when either of its values is 0. So a
container is written only once it has both numbers above zero, and every sample carries the time
it was read at, never the time of the scrape.
"""

from __future__ import annotations

from vnode.stats.collector import Snapshot

_FAMILIES = [
    ("container_cpu_usage_seconds_total", "counter",
     "[STABLE] Cumulative cpu time consumed by the container in core-seconds"),
    ("container_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the container in bytes"),
    ("container_start_time_seconds", "gauge",
     "[STABLE] Start time of the container since unix epoch in seconds"),
    ("node_cpu_usage_seconds_total", "counter",
     "[STABLE] Cumulative cpu time consumed by the node in core-seconds"),
    ("node_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the node in bytes"),
    ("pod_cpu_usage_seconds_total", "counter",
     "[STABLE] Cumulative cpu time consumed by the pod in core-seconds"),
    ("pod_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the pod in bytes"),
    ("resource_scrape_error", "gauge",
     "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise"),
]  # fmt: skip
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def render(snapshot: Snapshot) -> str:
    """The exposition text for ``snapshot``."""
    series: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
    for pod in snapshot.pods:
        pod_labels = f'namespace="{_escape(pod.namespace)}",pod="{_escape(pod.name)}"'
        complete = []
        for c in pod.containers:
            u = c.usage
            if not u.cpu_ns or not u.working_set:
                continue  # not yet measured: metrics-server would drop the whole pod for a 0
            labels = f'{{container="{_escape(c.name)}",{pod_labels}}}'
            ms = u.time_ns // 1_000_000
            series["container_cpu_usage_seconds_total"].append(f"{labels} {_number(u.cpu_ns / 1e9)} {ms}")
            series["container_memory_working_set_bytes"].append(f"{labels} {u.working_set} {ms}")
            series["container_start_time_seconds"].append(f"{labels} {_number(c.start_time)} {ms}")
            complete.append(c)
        u = pod.usage
        if complete and u.cpu_ns and u.working_set:
            ms = u.time_ns // 1_000_000
            series["pod_cpu_usage_seconds_total"].append(f"{{{pod_labels}}} {_number(u.cpu_ns / 1e9)} {ms}")
            series["pod_memory_working_set_bytes"].append(f"{{{pod_labels}}} {u.working_set} {ms}")
    node = snapshot.node_usage
    ms = node.time_ns // 1_000_000
    if node.cpu_ns:
        series["node_cpu_usage_seconds_total"].append(f" {_number(node.cpu_ns / 1e9)} {ms}")
    if node.working_set:
        series["node_memory_working_set_bytes"].append(f" {node.working_set} {ms}")
    series["resource_scrape_error"].append(f" {1 if snapshot.errors else 0}")
    lines = []
    for name, kind, help_text in _FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(name + rest for rest in series[name])
    return "\n".join(lines) + "\n"
