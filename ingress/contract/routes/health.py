"""``GET get-status``: the service's health, per family deployment, from Ray Serve's own view.

No API key: load balancers and Kubernetes probes call it. It answers 200 when every
family deployment can take work, 503 otherwise. Serve's view is read at most once per
``ttl`` seconds per ingress replica, whatever the number of callers (single flight), off
the event loop and within a time limit. Nothing internal reaches the body: no actor,
node or replica ids, no addresses, no Serve messages, no exception text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from deployments.catalog import deployment_name
from ingress.contract.routes.context import Studio
from ingress.contract.schemas.health import DeploymentHealth, Health

if TYPE_CHECKING:
    from ray.serve.schema import ApplicationDetails, DeploymentDetails

log = logging.getLogger("ingress.health")

#: Serve's deployment statuses that mean it failed (ray.serve._private.common.DeploymentStatus).
_FAILED = {"UNHEALTHY", "DEPLOY_FAILED"}
#: Serve's application statuses while it creates the deployments.
_CREATING = {"NOT_STARTED", "DEPLOYING"}


def read_serve() -> ApplicationDetails | None:
    """Serve's details of this replica's application (one controller call; blocking).

    The same call ``serve.status()`` makes, kept as details: they carry each
    deployment's target replica count, which ``serve.status()`` drops."""
    import ray

    if not ray.is_initialized():  # not in a replica: never start or join a cluster from here
        raise RuntimeError("not running in Ray")
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    app_name = serve.get_replica_context().app_name
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        raise RuntimeError("Serve is not running")
    return ServeInstanceDetails(**client.get_serve_details()).applications.get(app_name)


class ServeView:
    """Serve's view of the application, read at most once per ``ttl`` seconds (a failure too),
    by one call at a time however many requests wait for it; a caller waits at most
    ``timeout`` seconds (the read goes on, and the next callers share it)."""

    def __init__(self, read: Callable[[], Any] = read_serve, *, ttl: float = 1.0, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.read, self.ttl, self.timeout, self.clock = read, ttl, timeout, clock
        self._at: float | None = None
        self._value: Any = None
        self._ok = False
        self._inflight: asyncio.Future[None] | None = None

    async def get(self) -> tuple[bool, Any]:
        """``(True, details)``, or ``(False, None)`` when Serve could not be read in time."""
        if self._at is not None and self.clock() - self._at < self.ttl:
            return self._ok, self._value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
        try:
            await asyncio.wait_for(asyncio.shield(self._inflight), self.timeout)
        except TimeoutError:
            log.warning("health: Serve's state was not read within %.1f s", self.timeout)
            return False, None
        return self._ok, self._value

    async def _refresh(self) -> None:
        try:
            value, ok = await asyncio.to_thread(self.read), True
        except Exception as exc:  # any failure is "unknown"; the log names its type only
            log.warning("health: reading Serve's state failed (%s)", type(exc).__name__)
            value, ok = None, False
        finally:
            self._inflight = None
        self._value, self._ok, self._at = value, ok, self.clock()


def _value(status: Any) -> str:
    """An enum member's value (Serve's statuses are ``str`` enums), or the string itself."""
    return str(getattr(status, "value", status))


def _min_replicas(detail: DeploymentDetails) -> int:
    """The autoscaler's lower bound (the fixed replica count without autoscaling)."""
    config = detail.deployment_config.autoscaling_config
    if isinstance(config, dict):
        return int(config.get("min_replicas", 1))
    value = getattr(config, "min_replicas", None)
    return int(value) if isinstance(value, int) else 1


def deployment_health(family: str, gpu: str, detail: DeploymentDetails | None, app_status: str) -> DeploymentHealth:
    """One family deployment's public state from Serve's details of it (None: Serve has no such
    deployment, e.g. while the application is being created)."""
    if detail is None:
        state = "starting" if app_status in _CREATING else "unhealthy"
        return DeploymentHealth(family=family, gpu=gpu, status=state, replicas=0, target=0, available=False)
    running = sum(1 for r in detail.replicas if _value(r.state) == "RUNNING")
    target = int(detail.target_num_replicas)
    failed = _value(detail.status) in _FAILED
    if running > 0:
        status, available = "ready", True
    elif failed:
        status, available = "unhealthy", False
    elif target == 0:
        status, available = "scaled_to_zero", True
    else:  # replicas wanted, none up yet: a request waits for one when the autoscaler brought it up from zero
        status, available = "starting", _min_replicas(detail) == 0
    return DeploymentHealth(family=family, gpu=gpu, status=status, replicas=running, target=target, available=available)


def assess(keys: list[tuple[str, str]], app: ApplicationDetails | None, services: tuple[str, ...] = ()) -> Health:
    """The public health of the family deployments ``keys`` and the service deployments ``services``
    (``chat``, ``documents``) from Serve's details of the application."""
    found = app.deployments if app is not None else {}
    app_status = _value(app.status) if app is not None else ""
    deployments = {
        deployment_name(family, gpu): deployment_health(family, gpu, found.get(deployment_name(family, gpu)), app_status)
        for family, gpu in keys
    }
    deployments.update({name: deployment_health(name, "", found.get(name), app_status) for name in services})
    ready = all(d.available for d in deployments.values())
    return Health(status="ready" if ready else "degraded", deployments=deployments)


def router(studio: Studio, view: ServeView | None = None) -> APIRouter:
    api = APIRouter(tags=["health"])
    serve_view = view if view is not None else ServeView()
    config = studio.registry.config
    keys = [(family, str(gpu)) for family, gpu in config.deployment_keys()]
    services = tuple(name for name, on in (("documents", config.documents), ("chat", config.chat)) if on is not None)
    retry_after = str(studio.settings.retry_after_seconds)
    docs: dict[int | str, Any] = {503: {
        "model": Health,
        "description": "A family deployment cannot take work (`degraded`), or the state could not be read (`unknown`).",
        "headers": {"Retry-After": {"description": "Seconds to wait before asking again.", "required": True,
                                    "schema": {"type": "integer", "minimum": 1}}},
    }}

    @api.get("/get-status", response_model=Health, summary="Service health: ready or not, per family deployment",
             description="No API key (for load balancers and probes). 200 when every family deployment can take "
             "work, 503 otherwise. Read from Ray Serve at most once a second.", responses=docs)
    async def get_status() -> JSONResponse:
        ok, app = await serve_view.get()
        health = assess(keys, app, services) if ok else Health(status="unknown", deployments={})
        headers = {"Cache-Control": "no-store"}
        if health.status != "ready":
            headers["Retry-After"] = retry_after
        return JSONResponse(health.model_dump(mode="json"), status_code=200 if health.status == "ready" else 503,
                            headers=headers)

    return api
