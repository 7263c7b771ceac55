"""Fair dispatch order: one tenant's burst does not starve another; weights; priority."""

from ingress.tasks.fairness import FairShare
from storage.tasks import QueueEntry


def entries(tenant, n, start=0, priority=5, deployment="sd15-a10g"):
    return [QueueEntry(f"{start + i:032x}", tenant, deployment, None, priority) for i in range(n)]


def drain(fair, queue, slots=1, deployment="sd15-a10g"):
    """Dispatch ``slots`` per scan until the queue is empty; the tenants in dispatch order."""
    order = []
    queue = list(queue)
    while queue:
        for e in fair.pick(deployment, queue, slots):
            order.append(e.tenant)
            queue.remove(e)
    return order


def test_a_burst_from_one_tenant_does_not_starve_another():
    # a submitted 100 tasks first; b's 5 came after. FIFO would run all of a's first.
    order = drain(FairShare(lambda t: 1.0), entries("a", 100) + entries("b", 5, start=1000))
    assert [i for i, t in enumerate(order) if t == "b"] == [1, 3, 5, 7, 9]


def test_weights_share_in_proportion():
    order = drain(FairShare(lambda t: 3.0 if t == "gold" else 1.0), entries("gold", 60) + entries("std", 60, 100))
    first = order[:40]
    assert first.count("gold") == 30 and first.count("std") == 10


def test_priority_orders_within_a_tenant_then_age():
    queue = entries("a", 3, priority=5) + entries("a", 2, start=10, priority=9) + entries("a", 1, start=20, priority=0)
    picked = FairShare(lambda t: 1.0).pick("sd15-a10g", queue, 6)
    assert [(e.priority, e.task_id[-2:]) for e in picked] == [(9, "0a"), (9, "0b"), (5, "00"), (5, "01"), (5, "02"),
                                                               (0, "14")]


def test_priority_does_not_jump_other_tenants():
    queue = entries("a", 10, priority=9) + entries("b", 10, start=100, priority=0)
    assert drain(FairShare(lambda t: 1.0), queue)[:6] == ["a", "b", "a", "b", "a", "b"]


def test_idle_time_earns_no_credit_and_deployments_are_separate():
    fair = FairShare(lambda t: 1.0)
    drain(fair, entries("a", 50))  # a alone: its pass grows to 50
    # b arrives now; had a's head start counted against a, b would get 50 turns in a row.
    order = drain(fair, entries("a", 10, 500) + entries("b", 10, 600))
    assert order[:4] in (["a", "b", "a", "b"], ["b", "a", "b", "a"])
    # another deployment has its own passes
    assert [e.tenant for e in fair.pick("sdxl-a100", entries("a", 1, 900, deployment="sdxl-a100"), 1)] == ["a"]
