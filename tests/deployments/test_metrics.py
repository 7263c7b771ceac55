"""The metric definitions are accepted by Ray Serve's metrics API (a reserved tag such
as ``deployment`` makes Serve refuse them, and the service would export nothing)."""

import ray

from deployments.metrics import StudioMetrics


def test_every_metric_is_defined_with_tags_serve_allows(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    created = StudioMetrics._create()
    assert set(created) == {"requests", "request_seconds", "images", "failures", "queue_wait", "run_seconds", "tasks",
                            "task_results", "queue_depth", "webhooks", "quota"}
    for metric in created.values():
        assert not {"deployment", "replica", "application", "route"} & set(metric._tag_keys)
