"""Per-tenant quotas at the ingress: ask the coordinator, which keeps the counts for
every ingress replica (:mod:`ingress.tasks.quotas`), before a job starts.

A tenant with no limit that applies is not asked about. If the coordinator does
not answer within ``quota_check_seconds`` the job is admitted (availability over
enforcement; the refusal would otherwise come from a component that is down).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ingress.contract.errors import QuotaExceeded, ValidationFailed
from ingress.wiring.settings import IngressSettings

log = logging.getLogger(__name__)


class Admission:
    """``check(tenant, images, task)`` raises 429 (or 422 for a batch no quota window fits)."""

    def __init__(self, coordinator: Any, settings: IngressSettings):
        self.coordinator = coordinator
        self.settings = settings

    async def check(self, tenant: str, images: int, task: bool) -> None:
        max_tasks, per_minute, _ = self.settings.quota(tenant)
        if not per_minute and not (task and max_tasks):
            return
        response = self.coordinator.admit.remote(tenant, images, task)

        async def answer():
            return await response

        try:
            refusal = await asyncio.wait_for(answer(), self.settings.quota_check_seconds)
        except Exception:
            response.cancel()
            log.warning("quota check unavailable; admitting", extra={"tenant": tenant})
            return
        if refusal is None:
            return
        if refusal.retry_after is None:
            raise ValidationFailed(f"batch: {images} images exceed your quota of {refusal.limit} images per minute")
        if refusal.quota == "max_tasks":
            raise QuotaExceeded(f"quota: you have {refusal.limit} unfinished async tasks, your limit; retry when "
                                "some have finished", refusal.retry_after)
        raise QuotaExceeded(f"quota: {refusal.limit} images per minute; retry in {refusal.retry_after} s",
                            refusal.retry_after)
