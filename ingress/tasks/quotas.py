"""Per-tenant quotas, kept by the one coordinator replica so that every ingress
replica sees the same counts: unfinished async tasks at once, and per-minute
costs (``ingress.wiring.settings.RATES``: requests on every route, images, chat
tokens, document pages), each a token bucket refilled continuously.

A cost known only after the work (a PDF's pages, a chat's real usage) is settled
with :meth:`TenantQuotas.charge`: the bucket may go below zero, and the tenant's
next request of that kind waits until it refills (a debt, not a refusal after the fact).

Unfinished tasks are counted from the coordinator's last scan of the queue
markers plus the admissions since shortly before that scan (a submit writes its
marker milliseconds after it is admitted), so the count is never short by more
than the submits racing one scan, and a submit that failed after its admission
stops counting within seconds.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ADMISSION_OVERLAP_SECONDS = 2.0  # admissions this much older than a scan are in it (or never made a task)


@dataclass(frozen=True)
class Refusal:
    """Why a job may not start now: the quota, its limit, and when to retry (None: never, as asked)."""

    quota: str
    limit: int
    retry_after: int | None


class TenantQuotas:
    """Admission by tenant. ``limits(tenant)`` gives its ``TenantLimits`` (``max_tasks`` and
    ``per_minute``; 0 meaning no limit)."""

    def __init__(self, limits: Callable[[str], Any], clock: Callable[[], float]):
        self.limits = limits
        self.clock = clock
        self._scanned: Counter[str] = Counter()
        self._scan_at = -math.inf
        self._admitted: deque[tuple[float, str]] = deque()
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (tenant, rate) -> (tokens, at)

    def scanned(self, unfinished: Counter[str], listed_at: float) -> None:
        """The unfinished tasks per tenant that a scan listed at ``listed_at``."""
        self._scanned, self._scan_at = unfinished, listed_at
        while self._admitted and self._admitted[0][0] < listed_at - ADMISSION_OVERLAP_SECONDS:
            self._admitted.popleft()

    def unfinished(self, tenant: str) -> int:
        recent = sum(1 for at, t in self._admitted if t == tenant and at >= self._scan_at - ADMISSION_OVERLAP_SECONDS)
        return self._scanned.get(tenant, 0) + recent

    def _tokens(self, tenant: str, rate: str, per_minute: int, now: float) -> float:
        tokens, at = self._buckets.get((tenant, rate), (float(per_minute), now))
        return min(float(per_minute), tokens + (now - at) * per_minute / 60.0)

    def admit(self, tenant: str, costs: dict[str, int], task: bool = False) -> Refusal | None:
        """Count a job costing ``costs`` (per rate, e.g. ``{"images": 4}``; an async task if ``task``)
        against ``tenant``'s quotas, or say why not; a refused job is not counted at all."""
        limits = self.limits(tenant)
        now = self.clock()
        if task and limits.max_tasks and self.unfinished(tenant) >= limits.max_tasks:
            return Refusal("max_tasks", limits.max_tasks, retry_after=5)
        taken: dict[str, float] = {}
        for rate, cost in costs.items():
            per_minute = limits.per_minute.get(rate, 0)
            if not per_minute or cost <= 0:
                continue
            if cost > per_minute:
                return Refusal(f"{rate}_per_minute", per_minute, retry_after=None)
            tokens = self._tokens(tenant, rate, per_minute, now)
            if tokens < cost:
                return Refusal(f"{rate}_per_minute", per_minute,
                               retry_after=max(1, math.ceil((cost - tokens) * 60.0 / per_minute)))
            taken[rate] = tokens - cost
        for rate, left in taken.items():
            self._buckets[(tenant, rate)] = (left, now)
        if task:
            self._admitted.append((now, tenant))
        return None

    def charge(self, tenant: str, rate: str, amount: int) -> None:
        """Settle ``amount`` more (or, negative, less) of ``rate`` than was admitted; never refused."""
        per_minute = self.limits(tenant).per_minute.get(rate, 0)
        if not per_minute or not amount:
            return
        now = self.clock()
        tokens = self._tokens(tenant, rate, per_minute, now) - amount
        # A debt of at most one minute's worth: a huge document waits a minute, not an hour.
        self._buckets[(tenant, rate)] = (max(-float(per_minute), min(float(per_minute), tokens)), now)
