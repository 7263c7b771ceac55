"""The LLM vendors' adapters against the local fake of their wire formats: the documented request
reaches the vendor, the reply streams in order with one Usage last, and every failure is a VendorError
with the right reason."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
from pathlib import Path
from typing import Any

import pytest

from deployments.chat.messages import ChatImage, ChatTurn, ProviderCall, TextDelta, Usage
from deployments.chat.providers import PROVIDERS, ChatProvider
from deployments.chat.providers.base import parse_retry_after, reason_for, sanitise
from deployments.errors import VendorError
from deployments.vendors import Endpoint
from tests.support.fakes import FakeVendors

PNG = b"\x89PNG\r\n\x1a\n-not-really-a-png-"
JPEG = b"\xff\xd8\xff\xe0-jpeg-bytes"
CALL = ProviderCall(
    model="m-1", system="Be brief.", temperature=0.3, max_tokens=64,
    turns=(ChatTurn("user", "hello there", (ChatImage(PNG, "image/png", "high"), ChatImage(JPEG, "image/jpeg"))),
           ChatTurn("assistant", "hi"),
           ChatTurn("user", "tell me more")))
REPLY = ["echo: ", "tell ", "me ", "more"]  # the fake's reply, one word per chunk
PROMPT_TOKENS, COMPLETION_TOKENS = 8, 4  # words of system + turns; words of the reply
NAMES = sorted(PROVIDERS)
VENDOR_OF = {name: PROVIDERS[name].vendor for name in NAMES}



@pytest.fixture(autouse=True)
def _fresh(fake: FakeVendors) -> None:
    fake.reset()


def make(fake: FakeVendors, name: str, *, timeout: float = 5, key: str | None = "right", base_url: str | None = None
         ) -> ChatProvider:
    cls = PROVIDERS[name]
    api_key = fake.api_key(cls.vendor) if key == "right" else key
    return cls(Endpoint(cls.vendor, api_key, base_url or fake.base_url(cls.vendor), timeout))


def collect(provider: ChatProvider, call: ProviderCall = CALL) -> tuple[list[Any], VendorError | None]:
    """Every event the provider yields, and the VendorError it ended with (if any)."""
    events: list[Any] = []

    async def run() -> VendorError | None:
        try:
            async for event in provider.stream(call):
                events.append(event)
        except VendorError as exc:
            return exc
        finally:
            await provider.aclose()
        return None

    return events, asyncio.run(run())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- the documented request, the reply in order, one usage ----------------------------------------

def check_openai(request: Any) -> None:
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer fake-openai-key"
    body = request.body
    assert body["model"] == "m-1" and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.3 and body["max_completion_tokens"] == 64
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "Be brief."
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "hello there"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(PNG)}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(JPEG)}", "detail": "auto"}}]
    assert body["messages"][2]["content"] == "hi" and body["messages"][3]["content"] == "tell me more"


def check_anthropic(request: Any) -> None:
    assert request.path == "/v1/messages"
    headers = request.headers
    assert headers.get("x-api-key") == "fake-anthropic-key" or headers.get("authorization") == "Bearer fake-anthropic-key"
    assert headers["anthropic-version"]
    body = request.body
    assert body["model"] == "m-1" and body["stream"] is True and body["max_tokens"] == 64
    assert body["system"] == "Be brief."
    assert "temperature" not in body  # API 2026-10-21 refuses sampling parameters
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64(JPEG)}},
        {"type": "text", "text": "hello there"}]
    assert body["messages"][2]["content"] == "tell me more"


def check_mistral(request: Any) -> None:
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer fake-mistral-key"
    body = request.body
    assert body["model"] == "m-1" and body["stream"] is True
    assert body["temperature"] == 0.3 and body["max_tokens"] == 64
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "Be brief."
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "hello there"},
        {"type": "image_url", "image_url": f"data:image/png;base64,{b64(PNG)}"},
        {"type": "image_url", "image_url": f"data:image/jpeg;base64,{b64(JPEG)}"}]


def check_gemini(request: Any) -> None:
    assert request.path == "/v1/models/m-1:streamGenerateContent" and request.query == {"alt": "sse"}
    assert request.headers["x-goog-api-key"] == "fake-gemini-key"
    body = request.body
    assert [p["text"] for p in body["systemInstruction"]["parts"]] == ["Be brief."]
    assert body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 64}
    contents = body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    first = contents[0]["parts"]
    assert first[0] == {"text": "hello there"}
    inline = [p.get("inlineData") or p.get("inline_data") for p in first[1:]]
    assert [base64.urlsafe_b64decode(i["data"]) for i in inline] == [PNG, JPEG]  # the SDK sends URL-safe base64
    assert [i.get("mimeType") or i.get("mime_type") for i in inline] == ["image/png", "image/jpeg"]
    assert contents[2]["parts"] == [{"text": "tell me more"}]


CHECKS = {"OpenAI": check_openai, "ClaudeAI": check_anthropic, "MistralAI": check_mistral, "GeminiAI": check_gemini}


def test_registry_names_the_contracts_llm_values() -> None:
    assert set(PROVIDERS) == {"OpenAI", "ClaudeAI", "MistralAI", "GeminiAI"}
    assert {cls.vendor for cls in PROVIDERS.values()} == {"openai", "anthropic", "mistral", "gemini"}


@pytest.mark.parametrize("name", NAMES)
def test_documented_request_and_streamed_reply(fake: FakeVendors, name: str) -> None:
    events, error = collect(make(fake, name))
    assert error is None
    assert events == [TextDelta(piece) for piece in REPLY] + [Usage(PROMPT_TOKENS, COMPLETION_TOKENS)]
    requests = fake.requests(VENDOR_OF[name])
    assert len(requests) == 1
    CHECKS[name](requests[0])


@pytest.mark.parametrize("name", NAMES)
def test_no_system_and_text_only_turns(fake: FakeVendors, name: str) -> None:
    call = ProviderCall(model="m-2", system=None, turns=(ChatTurn("user", "ping"),), temperature=0.0, max_tokens=8)
    events, error = collect(make(fake, name), call)
    assert error is None
    assert events == [TextDelta("echo: "), TextDelta("ping"), Usage(1, 2)]
    body = fake.requests(VENDOR_OF[name])[0].body
    assert "system" not in body and "systemInstruction" not in body
    if "messages" in body:
        assert body["messages"] == [{"role": "user", "content": "ping"}]


def test_openai_reasoning_models_run_at_their_default_temperature(fake: FakeVendors) -> None:
    call = ProviderCall(model="gpt-5-mini", system=None, turns=(ChatTurn("user", "hi"),), temperature=0.2, max_tokens=8)
    events, error = collect(make(fake, "OpenAI"), call)
    assert error is None and events[-1] == Usage(1, 2)
    assert "temperature" not in fake.requests("openai")[0].body


def test_no_key_is_refused_before_any_call(fake: FakeVendors) -> None:
    for name in NAMES:
        events, error = collect(make(fake, name, key=None))
        assert events == [] and error is not None and error.reason == "credentials"
    assert fake.requests() == []


# ---- failures ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_rate_limited_keeps_retry_after_and_is_not_retried(fake: FakeVendors, name: str) -> None:
    fake.fail(VENDOR_OF[name], "rate_limited", retry_after="7")
    events, error = collect(make(fake, name))
    assert events == [] and error is not None
    assert (error.vendor, error.reason, error.retry_after) == (name, "rate_limited", 7.0)
    assert len(fake.requests(VENDOR_OF[name])) == 1  # the SDK's own retries are off


def test_retry_after_ms_and_http_date(fake: FakeVendors) -> None:
    fake.fail("openai", "rate_limited", retry_after_ms=1500)
    _, error = collect(make(fake, "OpenAI"))
    assert error is not None and error.retry_after == 1.5
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    fake.fail("anthropic", "rate_limited", retry_after=when)
    _, error = collect(make(fake, "ClaudeAI"))
    assert error is not None and error.reason == "rate_limited" and 25 <= (error.retry_after or 0) <= 31


@pytest.mark.parametrize(("name", "status"), [("OpenAI", 500), ("ClaudeAI", 529), ("MistralAI", 502), ("GeminiAI", 503),
                                              ("OpenAI", 504)])
def test_server_errors_are_unavailable(fake: FakeVendors, name: str, status: int) -> None:
    fake.fail(VENDOR_OF[name], "unavailable", status=status, retry_after="3")
    _, error = collect(make(fake, name))
    assert error is not None and (error.reason, error.retry_after) == ("unavailable", 3.0)
    assert len(fake.requests(VENDOR_OF[name])) == 1


@pytest.mark.parametrize("name", NAMES)
def test_refused_key_is_credentials(fake: FakeVendors, name: str) -> None:
    _, error = collect(make(fake, name, key="wrong-key"))
    assert error is not None and error.reason == "credentials" and error.detail == ""
    fake.fail(VENDOR_OF[name], "credentials", status=403)
    _, error = collect(make(fake, name))
    assert error is not None and error.reason == "credentials"


@pytest.mark.parametrize("name", NAMES)
def test_rejected_request_has_a_sanitised_detail(fake: FakeVendors, name: str) -> None:
    fake.fail(VENDOR_OF[name], "rejected")
    _, error = collect(make(fake, name))
    assert error is not None and error.reason == "rejected" and error.retry_after is None
    assert "maximum context length" in error.detail
    assert "sk-fake" not in error.detail and "http" not in error.detail and "internal.vendor" not in error.detail
    assert len(error.detail) <= 200
    fake.fail(VENDOR_OF[name], "rejected", status=404, message="model m-1 does not exist")
    _, error = collect(make(fake, name))
    assert error is not None and error.reason == "rejected" and "does not exist" in error.detail


@pytest.mark.parametrize("name", NAMES)
def test_slow_vendor_is_a_timeout(fake: FakeVendors, name: str) -> None:
    fake.fail(VENDOR_OF[name], "slow", delay=3)
    started = time.monotonic()
    _, error = collect(make(fake, name, timeout=0.4))
    assert error is not None and error.reason == "timeout"
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("name", NAMES)
def test_error_in_the_middle_of_the_stream(fake: FakeVendors, name: str) -> None:
    fake.fail(VENDOR_OF[name], "midstream", after=2)  # the vendor's error event (Mistral has none: a cut)
    events, error = collect(make(fake, name))
    assert events == [TextDelta("echo: "), TextDelta("tell ")]  # what came before, and no Usage
    assert error is not None and error.reason == "unavailable"


@pytest.mark.parametrize("name", NAMES)
def test_dropped_connection_mid_stream_is_unavailable(fake: FakeVendors, name: str) -> None:
    fake.fail(VENDOR_OF[name], "drop", after=1)
    events, error = collect(make(fake, name))
    assert events == [TextDelta("echo: ")]
    assert error is not None and error.reason == "unavailable"


def test_unreachable_vendor_is_unavailable(fake: FakeVendors) -> None:
    _, error = collect(make(fake, "OpenAI", base_url="http://127.0.0.1:9/openai/v1"))
    assert error is not None and error.reason == "unavailable"


@pytest.mark.parametrize("name", NAMES)
def test_closing_the_stream_early_stops_the_vendor_stream(fake: FakeVendors, name: str) -> None:
    fake.fail(VENDOR_OF[name], "wait_disconnect", interval=0.05, duration=20)
    provider = make(fake, name)

    async def read_three_then_close() -> list[Any]:
        got: list[Any] = []
        stream: Any = provider.stream(CALL)
        try:
            async for event in stream:
                got.append(event)
                if len(got) == 3:
                    break
            await stream.aclose()
            # the SDK client stays open: closing the stream alone must end the vendor's stream
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not fake.streams(VENDOR_OF[name])[0].disconnected:
                await asyncio.sleep(0.05)
        finally:
            await provider.aclose()
        return got

    assert asyncio.run(read_three_then_close()) == [TextDelta("tick ")] * 3
    record = fake.streams(VENDOR_OF[name])[0]
    assert record.disconnected and not record.completed
    assert record.chunks_sent < 100  # well before the 20 s the vendor would have streamed


# ---- the mapping helpers ------------------------------------------------------------------------------

def test_sanitise_removes_keys_and_urls_and_clips() -> None:
    text = ("Invalid key sk-proj-abcdef0123456789 for https://api.example.com/v1?key=AIzaSyA1234567890abcdef "
            "from 10.0.0.7:8080, Bearer tok_abc; tvly-0123456789abc " + "x" * 500)
    clean = sanitise(text)
    for leaked in ("sk-proj", "https", "AIza", "10.0.0.7", "tok_abc", "tvly-"):
        assert leaked not in clean
    assert clean.startswith("Invalid key [redacted] for [url]") and len(clean) <= 200


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None and parse_retry_after(None) is None
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert parse_retry_after({"retry-after": past}) == 0.0
    assert parse_retry_after({"retry-after": "999999"}) == 3600.0


@pytest.mark.parametrize(("status", "kinds", "reason"), [
    (429, [], "rate_limited"), (401, [], "credentials"), (403, [], "credentials"), (400, [], "rejected"),
    (413, [], "rejected"), (422, [], "rejected"), (404, [], "rejected"), (500, [], "unavailable"),
    (529, [], "unavailable"), (408, [], "timeout"), (400, ["invalid_argument", "api_key_invalid"], "credentials"),
    (200, ["overloaded_error"], "unavailable"), (200, ["rate_limit_error"], "rate_limited"),
    (None, ["invalid_request_error"], "rejected"), (None, ["resource_exhausted"], "rate_limited"), (None, [], "unavailable"),
])
def test_reason_for(status: int | None, kinds: list[str], reason: str) -> None:
    assert reason_for(status, kinds) == reason


# ---- the fake as a process of its own (how end-to-end tests run it) ---------------------------------------

def test_fake_runs_as_a_subprocess_driven_over_http() -> None:
    import json
    import subprocess
    import sys

    from tests.support.fakes import RemoteFakeVendors

    process = subprocess.Popen([sys.executable, "-m", "tests.support.fakes.llm_vendors", "--port", "0"],
                               cwd=Path(__file__).resolve().parents[3], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        remote = RemoteFakeVendors(ready["url"])
        assert remote.healthy() and ready["env"] == remote.env()
        assert ready["env"]["STUDIO_OPENAI_BASE_URL"] == ready["url"] + "/openai/v1"
        remote.fail("openai", "rate_limited", retry_after="5")
        cls = PROVIDERS["OpenAI"]
        endpoint = Endpoint("openai", ready["env"]["STUDIO_OPENAI_API_KEY"], ready["env"]["STUDIO_OPENAI_BASE_URL"], 5)
        _, error = collect(cls(endpoint))
        assert error is not None and (error.reason, error.retry_after) == ("rate_limited", 5.0)
        events, error = collect(cls(endpoint))
        assert error is None and events[-1] == Usage(PROMPT_TOKENS, COMPLETION_TOKENS)
        assert [r.path for r in remote.requests("openai")] == ["/v1/chat/completions"] * 2
        assert [s.completed for s in remote.streams("openai")] == [True]
        remote.reset()
        assert remote.requests() == []
    finally:
        process.terminate()
        process.wait(timeout=10)
