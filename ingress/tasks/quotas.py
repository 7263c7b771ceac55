"""Per-tenant quotas, kept by the one coordinator replica so that every ingress
replica sees the same counts: unfinished async tasks at once, and images per
minute (a token bucket refilled continuously, sync and async alike).

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

ADMISSION_OVERLAP_SECONDS = 2.0  # admissions this much older than a scan are in it (or never made a task)


@dataclass(frozen=True)
class Refusal:
    """Why a job may not start now: the quota, its limit, and when to retry (None: never, as asked)."""

    quota: str
    limit: int
    retry_after: int | None


class TenantQuotas:
    """Admission by tenant. ``limits(tenant)`` gives ``(max_tasks, images_per_minute)``, 0 meaning no limit."""

    def __init__(self, limits: Callable[[str], tuple[int, int]], clock: Callable[[], float]):
        self.limits = limits
        self.clock = clock
        self._scanned: Counter[str] = Counter()
        self._scan_at = -math.inf
        self._admitted: deque[tuple[float, str]] = deque()
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def scanned(self, unfinished: Counter[str], listed_at: float) -> None:
        """The unfinished tasks per tenant that a scan listed at ``listed_at``."""
        self._scanned, self._scan_at = unfinished, listed_at
        while self._admitted and self._admitted[0][0] < listed_at - ADMISSION_OVERLAP_SECONDS:
            self._admitted.popleft()

    def unfinished(self, tenant: str) -> int:
        recent = sum(1 for at, t in self._admitted if t == tenant and at >= self._scan_at - ADMISSION_OVERLAP_SECONDS)
        return self._scanned.get(tenant, 0) + recent

    def admit(self, tenant: str, images: int, task: bool) -> Refusal | None:
        """Count a job of ``images`` images (an async task if ``task``) against ``tenant``'s
        quotas, or say why not; a refused job is not counted."""
        max_tasks, per_minute = self.limits(tenant)
        now = self.clock()
        if task and max_tasks and self.unfinished(tenant) >= max_tasks:
            return Refusal("max_tasks", max_tasks, retry_after=5)
        if per_minute:
            if images > per_minute:
                return Refusal("images_per_minute", per_minute, retry_after=None)
            tokens, at = self._buckets.get(tenant, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
            if tokens < images:
                self._buckets[tenant] = (tokens, now)
                return Refusal("images_per_minute", per_minute,
                               retry_after=max(1, math.ceil((images - tokens) * 60.0 / per_minute)))
            self._buckets[tenant] = (tokens - images, now)
        if task:
            self._admitted.append((now, tenant))
        return None
