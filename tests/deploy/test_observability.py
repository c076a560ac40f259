"""The dashboard, the alert rules and the KEDA queries name only metrics (and labels) that exist: the gateway's
as it exposes them, vLLM's as the simulator (which follows vLLM 0.33) exposes them, and kube-state-metrics'."""

from __future__ import annotations

import copy
import json
import re
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deploy import checks
from inference.gateway import metrics

DASHBOARD = checks.DEPLOY / "grafana" / "wattle-gateway.json"
ALERTS = checks.DEPLOY / "prometheus" / "wattle-alerts.yaml"
# kube-state-metrics series the manifests and dashboards use (it ships with kube-prometheus-stack), with labels.
KUBE_STATE_METRICS = {
    "kube_job_status_active": {"namespace", "job_name"},
    "kube_deployment_status_replicas": {"namespace", "deployment"},
    "kube_deployment_status_replicas_available": {"namespace", "deployment"},
}
NAME_RE = re.compile(r"\b(wattle_[a-z0-9_]+|kube_[a-z0-9_]+|vllm:[a-z0-9_:]+)(\{[^}]*\})?")
LABEL_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")


def exposed_series() -> dict[str, set[str]]:
    """Sample name -> label names, from the gateway's collectors after one request of each kind."""
    store = metrics._Store()
    store.observe("chat.completions", "m", 200, 0.5, 0.1, 10, 5, 0.0002, "")
    store.observe("chat.completions", "m", 429, 0.01, None, 0, 0, 0.0001, "rate_limit_exceeded")
    store.pending["m"] = metrics._Level()
    backend = SimpleNamespace(name="b", healthy=True, outstanding=1, queue_waiting=0)
    gateway = SimpleNamespace(pool=SimpleNamespace(backends={"b": backend}))
    registry = CollectorRegistry()
    registry.register(store)
    registry.register(metrics.BackendCollector(gateway))
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def simulator_series() -> set[str]:
    source = (checks.ROOT / "inference" / "simulator" / "metrics.py").read_text(encoding="utf-8")
    return set(re.findall(r'"(vllm:[a-z0-9_:]+)"', source))


def unknown_references(expressions: list[str]) -> list[str]:
    known = exposed_series() | KUBE_STATE_METRICS
    vllm = simulator_series()
    problems = []
    for expr in expressions:
        for name, selector in NAME_RE.findall(expr):
            if name.startswith("vllm:"):
                if name not in vllm:
                    problems.append(f"{name} is not a vLLM metric")
                continue
            if name not in known:
                problems.append(f"{name} is not exported")
                continue
            for label, _op in LABEL_RE.findall(selector or ""):
                if label not in known[name] | {"le"}:
                    problems.append(f"{name} has no label {label}")
    return problems


def dashboard_expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def alert_expressions(rules: dict) -> list[str]:
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def keda_expressions() -> list[str]:
    return [t["metadata"]["query"] for d in checks.render(checks.OVERLAY) if d["kind"] == "ScaledObject"
            for t in d["spec"]["triggers"] if t["type"] == "prometheus"]


def test_gateway_exposes_what_the_docs_list():
    series = exposed_series()
    assert {"wattle_requests_total", "wattle_pending_requests", "wattle_tokens_total",
            "wattle_time_to_first_token_seconds_bucket", "wattle_backend_queue_waiting"} <= set(series)
    assert series["wattle_pending_requests"] == {"model"}


def test_dashboard_references_real_metrics():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 12
    assert unknown_references(expressions) == []
    assert {"wattle_pending_requests", "wattle_requests_total"} <= {n for e in expressions for n, _ in
                                                                     NAME_RE.findall(e)}


def test_alert_rules_reference_real_metrics():
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert unknown_references(alert_expressions(rules)) == []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["labels"]["severity"] in {"page", "ticket", "info"}
            assert rule["annotations"]["summary"]


def test_keda_queries_and_vllm_drain_reference_real_metrics():
    assert unknown_references(keda_expressions()) == []
    drain = [c["lifecycle"]["preStop"]["exec"]["command"][-1] for d in checks.render(checks.OVERLAY)
             if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("vllm-")
             for c in d["spec"]["template"]["spec"]["containers"]]
    assert drain and unknown_references(drain) == []
    assert "vllm:num_requests_running" in drain[0]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("wattle_pending_requests", "wattle_pending_request", "wattle_pending_request is not exported"),
    ("wattle_requests_total", "wattle_request_total", "wattle_request_total is not exported"),
    ('status=~"5.."', 'code=~"5.."', "has no label code"),
    ("wattle_tokens_total", "vllm:tokens_total", "vllm:tokens_total is not a vLLM metric"),
])
def test_a_misspelt_metric_is_caught(old, new, expected):
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    broken = copy.deepcopy(dashboard)
    for panel in broken["panels"]:
        for target in panel["targets"]:
            target["expr"] = target["expr"].replace(old, new)
    assert expected in " ".join(unknown_references(dashboard_expressions(broken)))


def test_dashboard_is_importable_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "wattle-gateway"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])
