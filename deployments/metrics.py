"""The studio's Prometheus metrics, through Ray Serve's metrics API.

One definition for every process: the ingress records requests, images and
failures; the coordinator task states, the queue, webhooks and quota refusals;
the family replicas queue wait and model time. Ray exports them (prefixed
``ray_``) on each node's metrics port, with Serve's own ``deployment``,
``replica`` and ``application`` tags added. Label values are bounded: app ids
and GPU types come from the registry, tenants from the configured keys, error
types from the contract.

Outside a Ray worker (unit tests) the metrics are no-ops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320]


def _keys(*names: str) -> Any:
    """Tag keys (Ray annotates them as a one-name tuple)."""
    return names


class StudioMetrics:
    """Lazily created metric objects, and one method per thing worth counting."""

    def __init__(self) -> None:
        self._m: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._gauge_keys: dict[str, set[tuple[tuple[str, str], ...]]] = {}

    def _metrics(self) -> dict[str, Any]:
        if self._m is not None:
            return self._m
        with self._lock:
            if self._m is None:
                self._m = self._create()
        return self._m

    @staticmethod
    def _create() -> dict[str, Any]:
        try:
            import ray
            from ray.serve import metrics as m

            if not ray.is_initialized():
                return {}
            specs = {
                "requests": m.Counter("studio_requests", description="HTTP requests to the generation and task routes.",
                                      tag_keys=_keys("app_id", "family", "gpu", "tenant", "endpoint", "code")),
                "request_seconds": m.Histogram("studio_request_seconds", description="Request latency at the ingress.",
                                               boundaries=SECONDS, tag_keys=_keys("app_id", "family", "gpu", "endpoint")),
                "images": m.Counter("studio_images", description="Images returned or stored for tenants.",
                                    tag_keys=_keys("app_id", "family", "gpu", "tenant")),
                "failures": m.Counter("studio_failures", description="Requests and tasks that ended in an error.",
                                      tag_keys=_keys("app_id", "family", "gpu", "tenant", "error")),
                "queue_wait": m.Histogram("studio_queue_wait_seconds", description="Async task: submit to worker start.",
                                          boundaries=SECONDS, tag_keys=_keys("app_id", "family", "gpu", "tenant")),
                "run_seconds": m.Histogram("studio_run_seconds", description="Model time of one job.",
                                           boundaries=SECONDS, tag_keys=_keys("family", "gpu", "task")),
                "tasks": m.Gauge("studio_tasks", description="Unfinished async tasks (PENDING: waiting in the store; "
                                 "STARTED: dispatched).", tag_keys=_keys("family", "gpu", "tenant", "status")),
                "task_results": m.Counter("studio_task_results", description="Async tasks that ended, by status.",
                                          tag_keys=_keys("app_id", "family", "gpu", "tenant", "status")),
                "queue_depth": m.Gauge("studio_queue_depth", description="Tasks waiting in the store per family "
                                       "deployment (what the autoscaler adds to Serve's ongoing requests).",
                                       tag_keys=_keys("family", "gpu")),
                "webhooks": m.Counter("studio_webhook_deliveries", description="Webhook delivery attempts by outcome.",
                                      tag_keys=_keys("tenant", "outcome")),
                "quota": m.Counter("studio_quota_rejections", description="Jobs refused by a tenant quota (429).",
                                   tag_keys=_keys("tenant", "quota")),
            }
        except Exception:  # pragma: no cover - metrics are best effort
            log.warning("ray.serve.metrics unavailable; metrics disabled", exc_info=True)
            return {}
        return specs

    def _do(self, name: str, method: str, value: float, tags: dict[str, str]) -> None:
        metric = self._metrics().get(name)
        if metric is None:
            return
        try:
            getattr(metric, method)(value, tags={k: str(v) for k, v in tags.items()})
        except Exception:  # pragma: no cover
            log.debug("metric %s update failed", name, exc_info=True)

    # -- ingress ------------------------------------------------------------
    def request(self, labels: dict[str, str], route: str, code: int, seconds: float) -> None:
        app = {k: labels.get(k, "") for k in ("app_id", "family", "gpu")}
        self._do("requests", "inc", 1, {**app, "tenant": labels.get("tenant", ""), "endpoint": route,
                                        "code": str(code)})
        self._do("request_seconds", "observe", seconds, {**app, "endpoint": route})

    def images(self, labels: dict[str, str], count: int) -> None:
        if count:
            self._do("images", "inc", count, {k: labels.get(k, "") for k in ("app_id", "family", "gpu", "tenant")})

    def failure(self, labels: dict[str, str], error: str) -> None:
        self._do("failures", "inc", 1, {**{k: labels.get(k, "") for k in ("app_id", "family", "gpu", "tenant")},
                                        "error": error})

    # -- families -----------------------------------------------------------
    def run(self, family: str, gpu: str, task: str, seconds: float) -> None:
        self._do("run_seconds", "observe", seconds, {"family": family, "gpu": gpu, "task": task})

    def queue_wait(self, app_id: str, family: str, gpu: str, tenant: str, seconds: float) -> None:
        self._do("queue_wait", "observe", max(0.0, seconds),
                 {"app_id": app_id, "family": family, "gpu": gpu, "tenant": tenant})

    def task_result(self, app_id: str, family: str, gpu: str, tenant: str, status: str, error: str | None) -> None:
        labels = {"app_id": app_id, "family": family, "gpu": gpu, "tenant": tenant}
        self._do("task_results", "inc", 1, {**labels, "status": status})
        if status == "FAILURE":
            self.failure(labels, error or "InternalError")

    # -- coordinator --------------------------------------------------------
    def task_gauges(self, queued: Iterable[tuple[Any, Any]], dispatched: set[str],
                    deployments: dict[str, dict[str, Any]], depths: dict[str, int]) -> None:
        """Unfinished tasks per (family, gpu, tenant, status) and the backlog per deployment;
        a combination that emptied is set to 0, not left at its last value."""
        counts: dict[tuple[tuple[str, str], ...], int] = {}
        for _, entry in queued:
            info = deployments.get(entry.deployment, {})
            key = (("family", info.get("family", "")), ("gpu", info.get("gpu", "")), ("tenant", entry.tenant),
                   ("status", "STARTED" if entry.task_id in dispatched else "PENDING"))
            counts[key] = counts.get(key, 0) + 1
        self._set_all("tasks", counts)
        self._set_all("queue_depth", {(("family", deployments.get(d, {}).get("family", "")),
                                       ("gpu", deployments.get(d, {}).get("gpu", ""))): n for d, n in depths.items()})

    def _set_all(self, name: str, values: dict[tuple[tuple[str, str], ...], int]) -> None:
        for gone in self._gauge_keys.get(name, set()) - set(values):
            self._do(name, "set", 0, dict(gone))
        for key, value in values.items():
            self._do(name, "set", value, dict(key))
        self._gauge_keys[name] = set(values)

    def webhook(self, tenant: str, outcome: str) -> None:
        self._do("webhooks", "inc", 1, {"tenant": tenant, "outcome": outcome})

    def quota_rejection(self, tenant: str, quota: str) -> None:
        self._do("quota", "inc", 1, {"tenant": tenant, "quota": quota})


STUDIO_METRICS = StudioMetrics()
