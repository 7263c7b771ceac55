"""Web search through Tavily's SDK against the local fake: the request, the Sources, the bounds, the errors."""

from __future__ import annotations

import asyncio

import pytest

from deployments.chat.messages import Source
from deployments.chat.search import MAX_QUERY_CHARS, WebSearch, clip_query
from deployments.errors import VendorError
from deployments.vendors import Endpoint
from tests.support.fakes import FakeVendors


@pytest.fixture(autouse=True)
def _fresh(fake: FakeVendors) -> None:
    fake.reset()


def search(fake: FakeVendors, query: str, max_results: int = 5, *, key: str | None = "right", timeout: float = 5
           ) -> list[Source] | VendorError:
    web = WebSearch(Endpoint("tavily", fake.api_key("tavily") if key == "right" else key, fake.base_url("tavily"), timeout))

    async def run() -> list[Source] | VendorError:
        try:
            return await web.search(query, max_results)
        except VendorError as exc:
            return exc
        finally:
            await web.aclose()

    return asyncio.run(run())


def test_search_returns_web_sources(fake: FakeVendors) -> None:
    found = search(fake, "what is ray serve", 2)
    assert found == [
        Source(kind="web", text="Passage 1 about what is ray serve.", score=0.9,
               url="https://example.com/what-is-ray-serve/1", title="Result 1 for what is ray serve"),
        Source(kind="web", text="Passage 2 about what is ray serve.", score=0.8,
               url="https://example.com/what-is-ray-serve/2", title="Result 2 for what is ray serve"),
    ]
    (request,) = fake.requests("tavily")
    assert request.path == "/search" and request.method == "POST"
    assert request.headers["authorization"] == "Bearer fake-tavily-key"
    assert request.body["query"] == "what is ray serve" and request.body["max_results"] == 2


def test_query_and_result_count_are_bounded(fake: FakeVendors) -> None:
    long_query = "word " * 300
    found = search(fake, long_query, 50)
    assert isinstance(found, list) and len(found) == 10
    sent = fake.requests("tavily")[0].body
    assert sent["max_results"] == 10 and len(sent["query"]) <= MAX_QUERY_CHARS and sent["query"].endswith("word")
    search(fake, "x", 0)
    assert fake.requests("tavily")[1].body["max_results"] == 1
    assert clip_query("  a \n b  ") == "a b"
    assert search(fake, "   ") == [] and len(fake.requests("tavily")) == 2  # nothing to search: no call


def test_long_content_is_clipped(fake: FakeVendors) -> None:
    source = WebSearch._source({"content": "y" * 5000, "url": "https://e.com/a", "title": "T", "score": 1})
    assert len(source.text) <= 2000 and source.score == 1.0 and source.url == "https://e.com/a"


def test_rate_limited_keeps_retry_after(fake: FakeVendors) -> None:
    fake.fail("tavily", "rate_limited", retry_after="11")
    error = search(fake, "q")
    assert isinstance(error, VendorError)
    assert (error.vendor, error.reason, error.retry_after) == ("Tavily", "rate_limited", 11.0)


@pytest.mark.parametrize(("kind", "status", "reason"), [
    ("unavailable", 503, "unavailable"), ("unavailable", 500, "unavailable"), ("credentials", 401, "credentials"),
    ("credentials", 403, "credentials"), ("rejected", 400, "rejected"), ("rejected", 422, "rejected"),
])
def test_errors_map_to_vendor_errors(fake: FakeVendors, kind: str, status: int, reason: str) -> None:
    fake.fail("tavily", kind, status=status, retry_after="4")
    error = search(fake, "q")
    assert isinstance(error, VendorError) and error.reason == reason
    if reason == "unavailable":
        assert error.retry_after == 4.0
    if kind == "rejected":
        assert "maximum context length" in error.detail
        assert "sk-fake" not in error.detail and "http" not in error.detail and len(error.detail) <= 200


def test_wrong_or_missing_key_is_credentials(fake: FakeVendors) -> None:
    error = search(fake, "q", key="wrong")
    assert isinstance(error, VendorError) and error.reason == "credentials"
    error = search(fake, "q", key=None)
    assert isinstance(error, VendorError) and error.reason == "credentials"
    assert len(fake.requests("tavily")) == 1  # no key: refused before any call (never Tavily's keyless mode)


def test_slow_search_is_a_timeout(fake: FakeVendors) -> None:
    fake.fail("tavily", "slow", delay=3)
    error = search(fake, "q", timeout=0.4)
    assert isinstance(error, VendorError) and error.reason == "timeout"


def test_unreachable_search_is_unavailable() -> None:
    web = WebSearch(Endpoint("tavily", "k", "http://127.0.0.1:9/tavily", 2))
    with pytest.raises(VendorError) as caught:
        asyncio.run(web.search("q"))
    assert caught.value.reason == "unavailable"
