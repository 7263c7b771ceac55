"""Per-tenant quotas at the ingress: ask the coordinator, which keeps the counts for
every ingress replica (:mod:`ingress.tasks.quotas`), before any expensive work starts.

A tenant with no limit that applies is not asked about. If the coordinator does
not answer within ``quota_check_seconds`` the request is admitted (availability over
enforcement; the refusal would otherwise come from a component that is down).
Costs known only afterwards (a PDF's pages, a chat's real usage) are settled with
:meth:`Admission.settle`, without waiting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ingress.contract.errors import QuotaExceeded, ValidationFailed
from ingress.wiring.settings import IngressSettings

log = logging.getLogger(__name__)

#: How a refusal of each rate reads: (what is counted, the field a never-fitting request is refused on).
_UNITS = {"requests": ("requests", "body"), "images": ("images", "batch"), "chat_tokens": ("chat tokens", "max_tokens"),
          "document_pages": ("document pages", "url")}


class Admission:
    """``check(tenant, costs, task)`` raises 429 (or 422 for a request no quota window fits)."""

    def __init__(self, coordinator: Any, settings: IngressSettings):
        self.coordinator = coordinator
        self.settings = settings
        self._settling: set[asyncio.Task] = set()

    async def check(self, tenant: str, costs: dict[str, int], task: bool = False) -> None:
        limits = self.settings.quota(tenant)
        applies = {rate: n for rate, n in costs.items() if n > 0 and limits.per_minute.get(rate)}
        if not applies and not (task and limits.max_tasks):
            return
        response = self.coordinator.admit.remote(tenant, applies, task)

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
        if refusal.quota == "max_tasks":
            raise QuotaExceeded(f"quota: you have {refusal.limit} unfinished async tasks, your limit; retry when "
                                "some have finished", refusal.retry_after or 5)
        rate = refusal.quota.removesuffix("_per_minute")
        unit, field = _UNITS.get(rate, (rate, "body"))
        if refusal.retry_after is None:
            raise ValidationFailed(f"{field}: {applies.get(rate)} {unit} exceed your quota of {refusal.limit} {unit} "
                                   "per minute")
        raise QuotaExceeded(f"quota: {refusal.limit} {unit} per minute; retry in {refusal.retry_after} s",
                            refusal.retry_after)

    def settle(self, tenant: str, rate: str, amount: int) -> None:
        """Charge (or refund, negative) ``amount`` of ``rate`` once known; fire and forget."""
        if not amount or not self.settings.quota(tenant).per_minute.get(rate):
            return

        async def send() -> None:
            try:
                await asyncio.wait_for(self.coordinator.charge.remote(tenant, rate, amount),
                                       self.settings.quota_check_seconds * 5)
            except Exception:
                log.warning("could not settle a quota charge", extra={"tenant": tenant, "rate": rate})

        task = asyncio.get_running_loop().create_task(send())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
