"""Request metrics and the request log at the ingress: one ASGI middleware counts every API
request by route template and status code, with the app, family, GPU type and tenant that
the route handler named (:func:`label_request`), and the error type the error handlers named
(:func:`label_error`); and writes one structured line per request to the replica's log (tenant,
app, deployment, task id, outcome, seconds; Serve adds its request id)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import Request

from deployments.metrics import STUDIO_METRICS

log = logging.getLogger("ingress.requests")

_LABELS = "studio_metric_labels"
#: Labels the request log line carries besides the tenant (``request_id`` is Serve's own, added to every line).
_LOGGED = ("app_id", "family", "gpu", "deployment", "task_id")
_ERROR = "studio_error_type"


def label_request(request: Request, **labels: str) -> None:
    """What this request is about (``app_id``, ``family``, ``gpu``, ``tenant``), for its metrics."""
    request.state.studio_metric_labels = {**getattr(request.state, _LABELS, {}), **labels}


def label_error(request: Request, error_type: str) -> None:
    request.state.studio_error_type = error_type


class RequestMetrics:
    """Pure ASGI middleware: count requests under ``prefix`` (not the docs or the schema)."""

    def __init__(self, app: Any, prefix: str):
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        code = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            route = template.removeprefix(self.prefix)
            state = scope.get("state") or {}
            labels = state.get(_LABELS, {})
            seconds = time.perf_counter() - started
            STUDIO_METRICS.request(labels, route, code, seconds)
            error = state.get(_ERROR, "HTTPError") if code >= 400 else None
            if error is not None and labels.get("app_id"):
                STUDIO_METRICS.failure(labels, error)
            outcome = error or "OK"
            log.info("%s %s %d %s", scope.get("method", ""), route, code, outcome, extra={
                "route": route, "code": code, "outcome": outcome, "seconds": round(seconds, 4),
                "tenant": state.get("tenant", ""), **{k: v for k, v in labels.items() if k in _LOGGED}})
