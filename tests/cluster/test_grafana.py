"""The Grafana dashboard: valid JSON, generated, and naming only metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cluster.grafana import HISTOGRAMS, SERVE_METRICS, STUDIO_METRICS, dashboard

ROOT = Path(__file__).resolve().parents[2]
#: The public metric list of the service (its label names in braces), and Ray Serve's own.
EXPORTED = {
    "ray_studio_requests_total": {"app_id", "family", "gpu", "tenant", "endpoint", "code"},
    "ray_studio_request_seconds": {"app_id", "family", "gpu", "endpoint"},
    "ray_studio_images_total": {"app_id", "family", "gpu", "tenant"},
    "ray_studio_failures_total": {"app_id", "family", "gpu", "tenant", "error"},
    "ray_studio_queue_wait_seconds": {"app_id", "family", "gpu", "tenant"},
    "ray_studio_run_seconds": {"family", "gpu", "task"},
    "ray_studio_tasks": {"family", "gpu", "tenant", "status"},
    "ray_studio_task_results_total": {"app_id", "family", "gpu", "tenant", "status"},
    "ray_studio_queue_depth": {"family", "gpu"},
    "ray_studio_webhook_deliveries_total": {"tenant", "outcome"},
    "ray_studio_quota_rejections_total": {"tenant", "quota"},
    "ray_serve_deployment_replica_healthy": {"deployment", "replica", "application"},
    "ray_serve_num_ongoing_http_requests": {"instance"},
}
FUNCTIONS = {"sum", "by", "rate", "histogram_quantile", "le"}


def _exprs(board: dict) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def _metrics(expr: str) -> set[str]:
    names = set(re.findall(r"\b(ray_[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in HISTOGRAMS else n
            for n in names}


def test_committed_dashboard_is_the_generated_one() -> None:
    committed = json.loads((ROOT / "k8s/grafana-dashboard.json").read_text())
    assert committed == dashboard()


def _groupings(expr: str) -> list[tuple[set[str], set[str]]]:
    """(labels of ``by (...)``, metrics aggregated by it) for every ``by (...) (body)`` in the expression."""
    out = []
    for match in re.finditer(r"by \(([^)]*)\)\s*\(", expr):
        depth, end = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        labels = {x.strip() for x in match.group(1).split(",") if x.strip()} - {"le"}
        out.append((labels, _metrics(expr[match.end():end])))
    return out


def _label_errors(expr: str) -> list[str]:
    """Each label a query groups or matches by must be a label of every metric it applies to."""
    errors = []
    for labels, metrics in _groupings(expr):
        errors += [f"{m} has no label {sorted(labels - EXPORTED[m])}" for m in metrics if not labels <= EXPORTED[m]]
    for metric, matchers in re.findall(r"\b(ray_[a-z0-9_]+)\{([^}]*)\}", expr):
        base = _metrics(metric).pop()
        errors += [f"{base} has no label {name}" for name in re.findall(r'(\w+)\s*[=!]~?"', matchers)
                   if name not in EXPORTED[base]]
    return errors


def test_every_query_names_only_exported_metrics_and_their_labels() -> None:
    board = dashboard()
    assert set(STUDIO_METRICS) | set(SERVE_METRICS) == set(EXPORTED)
    used: set[str] = set()
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            metrics = _metrics(expr)
            assert metrics and metrics <= set(EXPORTED), expr
            used |= metrics
            assert _label_errors(expr) == [], expr
            groupings = _groupings(expr)
            assert groupings, f"{expr}: aggregate with an explicit by (...)"
            # The legend names only labels the query keeps.
            kept = set.intersection(*(labels for labels, _ in groupings))
            assert set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"])) <= kept, target
            words = set(re.findall(r"\b([a-z_]+)\s*\(", expr))
            assert words <= FUNCTIONS, expr
    assert used == set(EXPORTED), set(EXPORTED) - used


def test_a_label_a_metric_lacks_is_caught() -> None:
    """ray_studio_run_seconds has no app_id: grouping or matching it by app_id fails, per metric."""
    assert _label_errors("histogram_quantile(0.5, sum by (le, app_id) (rate(ray_studio_run_seconds_bucket[5m])))") == [
        "ray_studio_run_seconds has no label ['app_id']"]
    assert _label_errors('sum by (family) (rate(ray_studio_run_seconds_count{app_id="x"}[5m]))') == [
        "ray_studio_run_seconds has no label app_id"]
    # Another metric of the same query having the label does not excuse it.
    mixed = "sum by (app_id) (rate(ray_studio_requests_total[5m])) / sum by (app_id) (rate(ray_studio_run_seconds_count[5m]))"
    assert _label_errors(mixed) == ["ray_studio_run_seconds has no label ['app_id']"]
    assert _label_errors("sum by (app_id) (rate(ray_studio_requests_total[5m]))") == []


def test_panels_cover_the_brief_and_do_not_overlap() -> None:
    board = dashboard()
    titles = " | ".join(p["title"] for p in board["panels"]).lower()
    for words in ("requests/s", "error rate", "p50 / p99", "images/min", "queue depth", "queue wait", "run seconds",
                  "tasks", "webhook", "quota", "replicas"):
        assert words in titles, words
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]]
    assert len(set(cells)) == len(cells)
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    assert all(t["datasource"]["uid"] == "${datasource}" for p in board["panels"] for t in p["targets"])


def test_a_query_with_an_unknown_metric_is_caught() -> None:
    assert _metrics("sum(rate(ray_studio_made_up_total[5m]))") - set(EXPORTED) == {"ray_studio_made_up_total"}
    assert _metrics("histogram_quantile(0.5, sum by (le) (rate(ray_studio_run_seconds_bucket[5m])))") == {"ray_studio_run_seconds"}
