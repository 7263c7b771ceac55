"""Request metrics at the ingress: one ASGI middleware counts every API request by
route template and status code, with the app, family, GPU type and tenant that
the route handler named (:func:`label_request`), and the error type the error
handlers named (:func:`label_error`)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request

from deployments.metrics import STUDIO_METRICS

_LABELS = "studio_metric_labels"
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
            state = scope.get("state") or {}
            labels = state.get(_LABELS, {})
            STUDIO_METRICS.request(labels, template.removeprefix(self.prefix), code, time.perf_counter() - started)
            if code >= 400 and labels.get("app_id"):
                STUDIO_METRICS.failure(labels, state.get(_ERROR, "HTTPError"))
