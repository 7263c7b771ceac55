"""What a route needs: the replica's :class:`Studio`, and the one way bodies are read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from ingress.admission import Admission
from ingress.contract.auth import KeyRing
from ingress.contract.body import BodyBudget, read_json
from ingress.dispatch import Dispatcher
from ingress.inputs import FetchLimits
from ingress.model_checks import ModelFacts
from ingress.tasks.service import TaskService
from ingress.wiring.registry import Registry
from ingress.wiring.settings import IngressSettings
from storage.base import ObjectStore


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

    @property
    def fetch_limits(self) -> FetchLimits:
        s = self.settings
        return FetchLimits(
            max_bytes=s.fetch_max_bytes, timeout_seconds=s.fetch_timeout_seconds, allow_loopback=s.allow_loopback_inputs
        )


class BodyReader:
    """Reads a route's JSON body within its byte cap, the read timeout and the replica's budget."""

    def __init__(self, settings: IngressSettings):
        self.timeout_seconds = settings.body_read_seconds
        self.budget = BodyBudget(settings.max_buffered_body_bytes, settings.retry_after_seconds)

    async def __call__(self, request: Request, max_bytes: int) -> Any:
        return await read_json(request, max_bytes, timeout_seconds=self.timeout_seconds, budget=self.budget)
