"""Request metrics and the request log at the ingress: one ASGI middleware counts every API
request by route template and status code, with the app, family, GPU type and tenant that
the route handler named (:func:`label_request`), and the error type the error handlers named
(:func:`label_error`); and writes one structured line per request to the replica's log (tenant,
app, deployment, task id, outcome, seconds; Serve adds its request id)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import Request

from deployments.metrics import STUDIO_METRICS

log = logging.getLogger("ingress.requests")

_LABELS = "studio_metric_labels"
#: Labels the request log line carries besides the tenant. Serve's own ``request_id``, ``deployment`` and
#: ``route`` are added to every line by Serve (and Ray drops a ``task_id``): ours are named apart.
_LOGGED = ("app_id", "family", "gpu", "family_deployment", "studio_task_id")
#: The status logged for a request whose client went away before its answer (nginx's convention).
CLIENT_GONE = 499
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
        except asyncio.CancelledError:  # the client went away: Serve cancels the request
            if code == 500:
                code = CLIENT_GONE
            raise
        finally:
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            route = template.removeprefix(self.prefix)
            state = scope.get("state") or {}
            labels = state.get(_LABELS, {})
            seconds = time.perf_counter() - started
            STUDIO_METRICS.request(labels, route, code, seconds)
            error = ("ClientGone" if code == CLIENT_GONE else state.get(_ERROR, "HTTPError")) if code >= 400 else None
            if error is not None and labels.get("app_id"):
                STUDIO_METRICS.failure(labels, error)
            outcome = error or "OK"
            log.info("%s %s %d %s", scope.get("method", ""), route, code, outcome, extra={
                "code": code, "outcome": outcome, "seconds": round(seconds, 4),
                "tenant": state.get("tenant", ""), **{k: v for k, v in labels.items() if k in _LOGGED}})
