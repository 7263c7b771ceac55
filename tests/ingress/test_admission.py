"""The ingress side of the quotas: who is asked, what a refusal becomes, and that a
coordinator that does not answer does not stop traffic."""

import asyncio

import pytest

from ingress.admission import Admission
from ingress.contract.errors import QuotaExceeded, ValidationFailed
from ingress.tasks.quotas import Refusal
from ingress.wiring.settings import IngressSettings


class Response:
    def __init__(self, value, delay=0.0):
        self.value, self.delay, self.cancelled = value, delay, False

    def __await__(self):
        return self._get().__await__()

    async def _get(self):
        await asyncio.sleep(self.delay)
        return self.value

    def cancel(self):
        self.cancelled = True


class Coordinator:
    def __init__(self, answer, delay=0.0):
        self.calls = []
        self.answer, self.delay = answer, delay
        self.admit = self

    def remote(self, *args):
        self.calls.append(args)
        self.last = Response(self.answer, self.delay)
        return self.last


def check(coordinator, settings, tenant, images, task):
    return asyncio.run(Admission(coordinator, settings).check(tenant, {"images": images}, task))


def test_only_tenants_with_a_limit_that_applies_are_asked():
    c = Coordinator(None)
    check(c, IngressSettings(tenant_max_tasks=0, tenant_images_per_minute=0), "t", 1, True)
    check(c, IngressSettings(tenant_max_tasks=10, tenant_images_per_minute=0), "t", 1, False)  # sync holds no task
    assert c.calls == []
    check(c, IngressSettings(tenant_max_tasks=10), "t", 2, True)
    assert c.calls == [("t", {}, True)]  # only the task count applies: no per-minute cost is sent
    check(c, IngressSettings(tenant_max_tasks=0, tenant_images_per_minute=5), "t", 2, False)
    assert c.calls[-1] == ("t", {"images": 2}, False)


def test_refusals_are_429_with_retry_after_or_422_when_never_possible():
    s = IngressSettings(tenant_images_per_minute=5)
    with pytest.raises(QuotaExceeded) as exc:
        check(Coordinator(Refusal("images_per_minute", 5, 12)), s, "t", 1, False)
    assert exc.value.status_code == 429 and exc.value.headers == {"Retry-After": "12"}
    with pytest.raises(QuotaExceeded, match="unfinished async tasks"):
        check(Coordinator(Refusal("max_tasks", 3, 5)), s, "t", 1, True)
    with pytest.raises(ValidationFailed, match="^batch: 8 images exceed your quota of 5"):
        check(Coordinator(Refusal("images_per_minute", 5, None)), s, "t", 8, False)


def test_a_silent_coordinator_admits_after_the_bound():
    c = Coordinator(Refusal("max_tasks", 1, 5), delay=5)
    check(c, IngressSettings(tenant_max_tasks=1, quota_check_seconds=0.2), "t", 1, True)  # no raise
    assert c.last.cancelled


def test_each_rate_reads_as_its_own_refusal():
    s = IngressSettings(tenant_requests_per_minute=10, tenant_chat_tokens_per_minute=100)
    with pytest.raises(QuotaExceeded, match="^quota: 10 requests per minute; retry in 4 s$"):
        asyncio.run(Admission(Coordinator(Refusal("requests_per_minute", 10, 4)), s).check("t", {"requests": 1}))
    with pytest.raises(ValidationFailed, match="^max_tokens: 500 chat tokens exceed your quota of 100"):
        asyncio.run(Admission(Coordinator(Refusal("chat_tokens_per_minute", 100, None)), s).check(
            "t", {"chat_tokens": 500}))


def test_settle_sends_a_charge_only_where_a_limit_applies():
    class Charges:
        def __init__(self):
            self.calls = []
            self.charge = self

        def remote(self, *args):
            self.calls.append(args)
            return Response(None)

    async def go(settings):
        c = Charges()
        admission = Admission(c, settings)
        admission.settle("t", "chat_tokens", -40)
        admission.settle("t", "document_pages", 7)
        await asyncio.sleep(0.05)
        return c.calls

    assert asyncio.run(go(IngressSettings(tenant_chat_tokens_per_minute=100))) == [("t", "chat_tokens", -40)]
    assert asyncio.run(go(IngressSettings())) == []
