"""The ingress deployment: one FastAPI app per replica around a ``Studio``."""

from __future__ import annotations

import logging
from typing import Any

from deployments.replica import prepare_replica
from ingress.admission import Admission
from ingress.contract.api import Studio, create_api
from ingress.contract.auth import KeyRing
from ingress.dispatch import ServeDispatcher
from ingress.model_checks import ModelFacts
from ingress.tasks.service import TaskService
from ingress.wiring.registry import Registry, ServiceConfig
from ingress.wiring.settings import IngressSettings
from storage.factory import open_store
from storage.settings import StorageSettings
from storage.tasks import TaskStore

log = logging.getLogger(__name__)


class StudioIngress:
    """Plain class; ``ingress.wiring.builder`` wraps it with ``serve.ingress`` and binds it."""

    def __init__(self, config: dict[str, Any], handles: dict[str, Any], coordinator: Any = None,
                 services: dict[str, Any] | None = None):
        prepare_replica()
        settings = IngressSettings()
        storage = StorageSettings()
        store = open_store(storage)
        tasks = None
        if coordinator is not None:

            async def kick(tenant: str, task_id: str, deployment: str) -> None:
                try:
                    await coordinator.kick.remote(tenant, task_id, deployment)
                except Exception:  # the coordinator's next scan finds the task anyway
                    log.warning("could not kick the coordinator for %s", task_id, exc_info=True)

            tasks = TaskService(TaskStore(store), storage.url_expiry_seconds, settings, kick)
        self.studio = Studio(
            registry=Registry(ServiceConfig.model_validate(config)),
            keys=KeyRing.load(settings.api_keys, settings.api_keys_file, settings.api_key_digests),
            dispatcher=ServeDispatcher(handles, settings.retry_after_seconds),
            store=store,
            settings=settings,
            url_expiry_seconds=storage.url_expiry_seconds,
            tasks=tasks,
            facts=ModelFacts(handles),
            admission=Admission(coordinator, settings) if coordinator is not None else None,
            chat=(services or {}).get("chat"),
            documents=(services or {}).get("documents"),
            coordinator=coordinator,
        )
        log.info("ingress ready", extra={"apps": len(self.studio.registry.apps), "keys": len(self.studio.keys)})

    def __serve_build_asgi_app__(self):
        return create_api(self.studio)
