"""metrics-server's reading of ``/metrics/resource`` (v0.6 and later), restated as a checker.

It decodes the exposition the way metrics-server's resource client does: only the node and
container series it knows, a container found by its ``container``, ``pod`` and ``namespace``
labels, each sample's explicit millisecond timestamp as its time, and a whole pod dropped when any
of its containers has 0 CPU or 0 memory (the node likewise). ``problems`` lists what metrics-server
would drop or could not use, so a test asserts it is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

NODE = {"node_cpu_usage_seconds_total": "cpu", "node_memory_working_set_bytes": "memory"}
CONTAINER = {
    "container_cpu_usage_seconds_total": "cpu",
    "container_memory_working_set_bytes": "memory",
    "container_start_time_seconds": "start",
}


@dataclass
class Point:
    cpu: float = 0.0
    memory: float = 0.0
    start: float = 0.0
    timestamp: float | None = None


@dataclass
class Decoded:
    node: Point | None
    pods: dict[tuple[str, str], dict[str, Point]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


def decode(text: str) -> Decoded:
    node = Point()
    pods: dict[tuple[str, str], dict[str, Point]] = {}
    problems: list[str] = []
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            if sample.name in NODE:
                if sample.timestamp is None:
                    problems.append(f"{sample.name} has no timestamp")
                setattr(node, NODE[sample.name], sample.value)
                node.timestamp = sample.timestamp
            elif sample.name in CONTAINER:
                labels = sample.labels
                missing = {"container", "pod", "namespace"} - set(labels)
                if missing:
                    problems.append(f"{sample.name} lacks labels {sorted(missing)}")
                    continue
                if sample.timestamp is None:
                    problems.append(f"{sample.name}{labels} has no timestamp")
                pod = pods.setdefault((labels["namespace"], labels["pod"]), {})
                point = pod.setdefault(labels["container"], Point())
                setattr(point, CONTAINER[sample.name], sample.value)
                if sample.name != "container_start_time_seconds":
                    point.timestamp = sample.timestamp
    decoded_node: Point | None = node
    if not node.timestamp or node.cpu == 0 or node.memory == 0:
        problems.append(f"node dropped: {node}")
        decoded_node = None
    kept = {}
    for ref, containers in pods.items():
        zero = [name for name, p in containers.items() if p.cpu == 0 or p.memory == 0]
        if zero:
            problems.append(f"pod {ref} dropped: containers {zero} report 0")
        else:
            kept[ref] = containers
    return Decoded(decoded_node, kept, problems, names)
