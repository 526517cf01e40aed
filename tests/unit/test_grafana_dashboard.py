"""The Grafana dashboard in deploy/ plots only what cdcsync really serves on /metrics.

Every query's metric names (with their ``_total``, ``_bucket`` suffixes) and every label it
groups or filters by must appear in the text that ``/metrics`` serves for the sample
configuration; the compose file provisions the dashboard, its datasource and a Prometheus
that scrapes cdcsync and evaluates the alert rules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdc.capture.runtime import Capture
from cdc.config import load_config
from cdc.inbound.apply import InboundStats
from cdc.ops.metrics import RuntimeCollector
from cdc.sync.runtime import Sync
from cdc.sync.worker import IntegrationStats

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cdcsync.json"
# Labels Prometheus itself adds to every scraped series, and PromQL's own.
SCRAPE_LABELS = {"instance", "job", "le"}


def served() -> tuple[set[str], set[str]]:
    """Metric and label names of the /metrics text for the sample configuration, with one
    integration of each kind holding (zero) counters, as a running process serves them."""
    sample = DEPLOY / "cdcsync.yaml"
    names = re.findall(r"(\w+)_env:\s*(\w+)", sample.read_text())
    env = {var: f"postgresql://u:p@db/{var.lower()}" for _, var in names}
    config = load_config(sample, env=env)
    capture = Capture(config)
    capture.stats.heartbeat_lag_ms = 1.0
    capture.stats.retained_wal_bytes = 0
    sync = Sync(config)
    for name in config.integrations:
        sync.workers[name] = SimpleNamespace(stats=IntegrationStats())  # type: ignore[assignment]
        sync.inbound_workers[name] = SimpleNamespace(stats=InboundStats())  # type: ignore[assignment]
    registry = CollectorRegistry()
    registry.register(RuntimeCollector(capture=capture, sync=sync))
    return names_in(generate_latest(registry).decode())


def names_in(text: str) -> tuple[set[str], set[str]]:
    """The metric names and label names of a Prometheus text exposition."""
    metrics: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            metrics.add(sample.name)
            labels |= set(sample.labels)
    return metrics, labels


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def dashboard_problems(metrics: set[str], labels: set[str]) -> list[str]:
    """What the dashboard's queries use that the exposition does not serve."""
    problems: list[str] = []
    used: set[str] = set()
    for panel in panels():
        title = panel["title"]
        if not panel["targets"]:
            problems.append(f"{title!r} has no query")
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\bcdcsync_\w+", expr))
            if not names:
                problems.append(f"{title!r}: no cdcsync metric in {expr}")
            if names - metrics:
                problems.append(f"{title!r}: metrics not served: {sorted(names - metrics)}")
            used |= names
            grouped = {
                label.strip()
                for group in re.findall(r"by \(([^)]*)\)", expr)
                for label in group.split(",")
            }
            filtered = set(re.findall(r"(\w+)=~?\"", expr))
            unknown = (grouped | filtered) - labels - SCRAPE_LABELS
            if unknown:
                problems.append(f"{title!r}: labels not served: {sorted(unknown)}")
            shown = set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]))
            if shown - grouped:
                problems.append(f"{title!r}: the legend shows {sorted(shown - grouped)}")
    # The dashboard covers capture and sync: lag, throughput, latency, circuit, dead letters.
    for needed in (
        "cdcsync_replication_lag_bytes",
        "cdcsync_captured_events_total",
        "cdcsync_kafka_delivery_latency_seconds_bucket",
        "cdcsync_applied_total",
        "cdcsync_apply_latency_seconds_bucket",
        "cdcsync_circuit_state",
        "cdcsync_dead_lettered_total",
    ):
        if needed not in used:
            problems.append(f"no panel shows {needed}")
    return problems


def test_every_panel_queries_only_metrics_and_labels_that_metrics_serves() -> None:
    assert dashboard_problems(*served()) == []


def test_compose_provisions_the_dashboard_and_a_prometheus_that_scrapes_cdcsync() -> None:
    (compose,) = yaml.safe_load_all((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    grafana = services["grafana"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/cdcsync.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yaml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["cdcsync:8080"]
    assert job["authorization"]["credentials_file"] == "/etc/prometheus/admin-token"
    mounted = services["prometheus"]["volumes"]
    assert "./prometheus/alerts.yaml:/etc/prometheus/cdcsync-alerts.yaml:ro" in mounted
    assert prometheus["rule_files"] == ["/etc/prometheus/cdcsync-alerts.yaml"]
