"""Which queued task a family deployment gets next: weighted fair share across
tenants (stride scheduling), priority within a tenant.

Each (deployment, tenant) has a *pass*; the tenant with the lowest pass that has
work goes next and its pass grows by ``1 / weight``. A tenant that had nothing
queued re-enters at the lowest pass of the tenants still waiting, so idle time
earns no credit and a burst from one tenant cannot starve another: with equal
weights, two busy tenants alternate whatever their queue lengths. Within one
tenant, higher ``priority`` first, then oldest first (task ids sort by creation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from storage.tasks import QueueEntry


class FairShare:
    """Stride scheduler over queued tasks, one pass per (deployment, tenant)."""

    def __init__(self, weight: Callable[[str], float]):
        self.weight = weight
        self._pass: dict[tuple[str, str], float] = {}

    def pick(self, deployment: str, waiting: Iterable[QueueEntry], slots: int) -> list[QueueEntry]:
        """Up to ``slots`` entries of ``waiting`` (all for ``deployment``), in dispatch
        order. The caller dispatches every entry returned: each one advances its tenant."""
        queues: dict[str, list[QueueEntry]] = {}
        for entry in waiting:
            queues.setdefault(entry.tenant, []).append(entry)
        for key in [k for k in self._pass if k[0] == deployment and k[1] not in queues]:
            del self._pass[key]  # idle: its pass is forgotten, it re-enters at the floor
        if not queues:
            return []
        for entries in queues.values():
            entries.sort(key=lambda e: (-e.priority, e.task_id), reverse=True)  # pop() takes the next one
        known = [self._pass[(deployment, t)] for t in queues if (deployment, t) in self._pass]
        floor = min(known) if known else 0.0
        for tenant in queues:
            self._pass.setdefault((deployment, tenant), floor)
        chosen: list[QueueEntry] = []
        while len(chosen) < slots and queues:
            tenant = min(queues, key=lambda t: (self._pass[(deployment, t)], t))
            chosen.append(queues[tenant].pop())
            self._pass[(deployment, tenant)] += 1.0 / max(self.weight(tenant), 1e-3)
            if not queues[tenant]:
                del queues[tenant]
        return chosen
