"""What a route needs: the replica's :class:`Studio`, and the one way bodies are read."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from ingress.admission import Admission
from ingress.contract.auth import KeyRing
from ingress.contract.body import BodyBudget, read_json
from ingress.contract.errors import Overloaded
from ingress.dispatch import Dispatcher
from ingress.inputs import FetchLimits
from ingress.inputs.decoding import DecodeBudget, ImageLoader, default_budget_bytes
from ingress.model_checks import ModelFacts
from ingress.tasks.service import TaskService
from ingress.wiring.registry import Registry
from ingress.wiring.settings import IngressSettings
from storage.base import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class Studio:
    """Everything a request needs; built once per ingress replica."""

    registry: Registry
    keys: KeyRing
    dispatcher: Dispatcher
    store: ObjectStore
    settings: IngressSettings
    url_expiry_seconds: int
    tasks: TaskService | None = None  # None: async tasks are off (e.g. the in-process benchmark)
    facts: ModelFacts | None = None  # None: the model-dependent checks are left to the family
    admission: Admission | None = None  # None: no per-tenant quotas (no coordinator to keep the counts)
    chat: Any = None  # the chat service deployment's handle (None: no chat API)
    documents: Any = None  # the document store deployment's handle (None: no pdfVectorStore)
    coordinator: Any = None  # the task coordinator's handle (it holds the webhook secrets)
    decode_budget: DecodeBudget = field(init=False)
    _webhook_tenants: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.decode_budget = DecodeBudget(s.decode_budget_bytes or default_budget_bytes(), s.decode_wait_seconds,
                                          s.retry_after_seconds)

    @property
    def fetch_limits(self) -> FetchLimits:
        s = self.settings
        return FetchLimits(
            max_bytes=s.fetch_max_bytes, timeout_seconds=s.fetch_timeout_seconds, allow_loopback=s.allow_loopback_inputs
        )

    def images(self) -> ImageLoader:
        """A request's image loader, under this replica's decode budget (``async with`` it)."""
        return ImageLoader(self.fetch_limits, self.decode_budget)

    async def has_webhook_secret(self, tenant: str) -> bool:
        """Whether ``tenant`` can sign webhooks: told at start (the embedded default), or asked of the
        coordinator, which holds the secrets (a cluster; a yes is remembered for a minute)."""
        if self.settings.has_webhook_secret(tenant):
            return True
        if self.coordinator is None:
            return False
        if self._webhook_tenants.get(tenant, 0.0) > time.monotonic():
            return True
        try:
            found = await asyncio.wait_for(self.coordinator.has_webhook_secret.remote(tenant), 5)
        except Exception:
            log.warning("could not ask the coordinator for a webhook secret", extra={"tenant": tenant})
            raise Overloaded("webhook: could not check your webhook signing secret now; retry later",
                             self.settings.retry_after_seconds) from None
        if found:
            self._webhook_tenants[tenant] = time.monotonic() + 60
        return bool(found)


class BodyReader:
    """Reads a route's JSON body within its byte cap, the read timeout and the replica's budget."""

    def __init__(self, settings: IngressSettings):
        self.timeout_seconds = settings.body_read_seconds
        self.budget = BodyBudget(settings.max_buffered_body_bytes, settings.retry_after_seconds)

    async def __call__(self, request: Request, max_bytes: int) -> Any:
        return await read_json(request, max_bytes, timeout_seconds=self.timeout_seconds, budget=self.budget)
