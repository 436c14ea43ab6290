"""conf/grafana-dashboard.json asks only for metrics vnode exports (on /metrics or
/metrics/resource), by their exposed names (``_total``, ``_bucket`` ...)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_stats import GOLDEN
from vnode.metrics.node import NodeMetrics, NodeReadings

DASHBOARD = Path(__file__).resolve().parents[2] / "conf" / "grafana-dashboard.json"
PROMQL = {"rate", "increase", "sum", "by", "histogram_quantile", "label_values", "without", "avg", "max",
          "min", "on", "ignoring"}  # functions and keywords  # fmt: skip
LABELS = {"le", "node", "namespace", "pod", "code", "operation_type", "container_state"}


def exported() -> set[str]:
    metrics = NodeMetrics()
    metrics.runtime_call("Version", 0.01, True)
    metrics.rest_request("GET", "h", "200")
    metrics.pod_started(1.0)
    metrics.add_readings(NodeReadings(
        running_pods=lambda: 1, containers_by_state=lambda: {"running": 1}, link_online=lambda: True,
        store_info=lambda: {"map_size": 1, "used": 1, "commits": 1}, events_backlog=lambda: 0,
    ))  # fmt: skip
    text = metrics.render().decode() + GOLDEN
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_dashboard_queries_use_exported_metric_names() -> None:
    board = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in board["panels"] for t in p["targets"]]
    expressions += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    assert len(expressions) >= 10
    names = exported()
    used = set()
    for expr in expressions:
        bare = re.sub(r'"[^"]*"|\[[^\]]*\]|\{[^}]*\}', " ", expr)  # strings, ranges, matchers
        used |= {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w not in PROMQL | LABELS}
    unknown = used - names
    assert not unknown, f"the dashboard asks for metrics vnode does not export: {sorted(unknown)}"
    assert {"container_cpu_usage_seconds_total", "kubelet_running_pods", "vnode_link_online"} <= used
