"""Per-tenant quotas: unfinished tasks and images per minute."""

from collections import Counter

from ingress.tasks.quotas import TenantQuotas


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def quotas(limits):
    clock = Clock()
    return TenantQuotas(lambda t: limits.get(t, (0, 0)), clock), clock


def test_unfinished_tasks_count_the_scan_and_the_admissions_since():
    q, clock = quotas({"a": (3, 0)})
    assert q.admit("a", 1, task=True) is None and q.admit("a", 1, task=True) is None
    q.scanned(Counter({"a": 2}), listed_at=clock.now + 0.1)  # the scan saw both markers
    assert q.unfinished("a") <= 4  # the 2 s overlap may count them twice, never zero times
    clock.now += 5
    q.scanned(Counter({"a": 2}), listed_at=clock.now)
    assert q.unfinished("a") == 2
    assert q.admit("a", 1, task=True) is None
    refusal = q.admit("a", 1, task=True)
    assert refusal is not None and (refusal.quota, refusal.limit) == ("max_tasks", 3) and refusal.retry_after > 0
    assert q.admit("a", 1, task=False) is None  # a synchronous call holds no task
    assert q.admit("b", 1, task=True) is None  # no limit for b


def test_images_per_minute_is_a_bucket_refilled_continuously():
    q, clock = quotas({"a": (0, 6)})
    assert q.admit("a", 4, task=False) is None and q.admit("a", 2, task=False) is None
    refusal = q.admit("a", 1, task=False)
    assert refusal.quota == "images_per_minute" and refusal.retry_after == 10  # one image per 10 s
    clock.now += 10
    assert q.admit("a", 1, task=False) is None
    assert q.admit("a", 7, task=False).retry_after is None  # larger than the bucket: never fits
    assert q.admit("a", 6, task=False).retry_after == 60  # refused ones are not counted
