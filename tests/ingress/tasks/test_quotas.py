"""Per-tenant quotas: unfinished tasks, and per-minute buckets (requests, images, chat tokens, pages)."""

from collections import Counter

from ingress.tasks.quotas import TenantQuotas
from ingress.wiring.settings import RATES, TenantLimits


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def limits(max_tasks=0, **per_minute):
    return TenantLimits(max_tasks=max_tasks, per_minute={r: per_minute.get(r, 0) for r in RATES},
                        concurrent_requests=0, open_uploads=0)


def quotas(table):
    clock = Clock()
    return TenantQuotas(lambda t: table.get(t, limits()), clock), clock


def test_unfinished_tasks_count_the_scan_and_the_admissions_since():
    q, clock = quotas({"a": limits(max_tasks=3)})
    assert q.admit("a", {"images": 1}, task=True) is None and q.admit("a", {"images": 1}, task=True) is None
    q.scanned(Counter({"a": 2}), listed_at=clock.now + 0.1)  # the scan saw both markers
    assert q.unfinished("a") <= 4  # the 2 s overlap may count them twice, never zero times
    clock.now += 5
    q.scanned(Counter({"a": 2}), listed_at=clock.now)
    assert q.unfinished("a") == 2
    assert q.admit("a", {"images": 1}, task=True) is None
    refusal = q.admit("a", {"images": 1}, task=True)
    assert refusal is not None and (refusal.quota, refusal.limit) == ("max_tasks", 3) and refusal.retry_after > 0
    assert q.admit("a", {"images": 1}, task=False) is None  # a synchronous call holds no task
    assert q.admit("b", {"images": 1}, task=True) is None  # no limit for b


def test_images_per_minute_is_a_bucket_refilled_continuously():
    q, clock = quotas({"a": limits(images=6)})
    assert q.admit("a", {"images": 4}) is None and q.admit("a", {"images": 2}) is None
    refusal = q.admit("a", {"images": 1})
    assert refusal.quota == "images_per_minute" and refusal.retry_after == 10  # one image per 10 s
    clock.now += 10
    assert q.admit("a", {"images": 1}) is None
    assert q.admit("a", {"images": 7}).retry_after is None  # larger than the bucket: never fits
    assert q.admit("a", {"images": 6}).retry_after == 60  # refused ones are not counted


def test_every_rate_has_its_own_bucket_and_a_refusal_takes_from_none():
    q, clock = quotas({"a": limits(requests=2, chat_tokens=1000)})
    assert q.admit("a", {"requests": 1, "chat_tokens": 600}) is None
    refusal = q.admit("a", {"requests": 1, "chat_tokens": 600})  # the tokens do not fit
    assert refusal.quota == "chat_tokens_per_minute" and refusal.retry_after == 12
    assert q.admit("a", {"requests": 1}) is None  # the refused request took no request either
    assert q.admit("a", {"requests": 1}).quota == "requests_per_minute"
    assert q.admit("b", {"requests": 100, "chat_tokens": 10**6}) is None  # b has no limits


def test_a_charge_after_the_work_puts_the_bucket_in_debt_and_the_next_waits():
    q, clock = quotas({"a": limits(document_pages=60)})
    assert q.admit("a", {"document_pages": 1}) is None
    q.charge("a", "document_pages", 99)  # a 100-page PDF: 40 pages over the bucket
    refusal = q.admit("a", {"document_pages": 1})
    assert refusal.quota == "document_pages_per_minute" and refusal.retry_after == 41
    clock.now += 41
    assert q.admit("a", {"document_pages": 1}) is None
    q.charge("a", "document_pages", 10**6)  # debt is capped at a minute's worth: the next waits 61 s, not days
    assert q.admit("a", {"document_pages": 1}).retry_after == 61
    q.charge("a", "document_pages", -1000)  # a refund never lifts the bucket over its size
    assert q.admit("a", {"document_pages": 60}) is None and q.admit("a", {"document_pages": 1}) is not None
    q.charge("b", "document_pages", 10**6)  # no limit: nothing is kept
    assert q.admit("b", {"document_pages": 10**6}) is None
