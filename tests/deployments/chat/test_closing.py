"""The chat service closes every vendor SDK client it opened when Serve stops the replica (Serve awaits the
replica's ``__del__``; ours is an instance attribute, so the garbage collector never calls it), a second
close is harmless, one client failing to close does not keep the others open, and a stopped service opens
no new client. Also: which providers have a key (names only), for the ingress's early refusal."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from deployments.chat.messages import ChatJob, ChatTurn
from deployments.chat.service import ChatService
from deployments.errors import VendorError

MODELS = {"OpenAI": "gpt-4o-mini", "ClaudeAI": "claude-haiku-4-5", "MistralAI": "mistral-small-latest",
          "GeminiAI": "gemini-2.5-flash"}




def _job(provider: str, **kw) -> ChatJob:
    return ChatJob(request_id="r1", tenant="tenant-a", provider=provider, model=MODELS[provider], temperature=0.2,
                   system=None, turns=(ChatTurn("user", "penguins?"),), max_tokens=16, **kw)


def _http_clients(service: ChatService) -> dict[str, list]:
    """The HTTP clients under each SDK client the service opened (what closing must close)."""
    providers = service._providers
    mistral = providers["MistralAI"]._client.sdk_configuration
    return {
        "OpenAI": [providers["OpenAI"]._client._client],
        "ClaudeAI": [providers["ClaudeAI"]._client._client],
        "MistralAI": [mistral.async_client, mistral.client],
        "GeminiAI": [providers["GeminiAI"]._http],
        "Tavily": [service._search._client._client],
    }


def test_stopping_the_replica_closes_every_client_once(fake):
    async def replica() -> None:
        service = ChatService(vendors=fake.vendor_settings())
        for provider in MODELS:  # each SDK client opened and used (connections in its pool)
            await service.chat(_job(provider, internet_search=provider == "OpenAI"))
        clients = _http_clients(service)
        assert all(not c.is_closed for group in clients.values() for c in group)
        # What Serve does when it stops the replica:
        assert "__del__" not in vars(ChatService) and inspect.iscoroutinefunction(service.__del__)
        await service.__del__()
        for name, group in clients.items():
            assert all(c.is_closed for c in group), name
        assert service.closed and service._providers == {} and service._search is None
        await service.__del__()  # a second close is harmless
        with pytest.raises(VendorError) as caught:  # a stopped service opens no new client
            await service.chat(_job("OpenAI"))
        assert caught.value.reason == "unavailable"

    asyncio.run(replica())


def test_one_client_failing_to_close_does_not_keep_the_others_open(fake):
    class Broken:
        name = "Broken"

        async def aclose(self) -> None:
            raise RuntimeError("the pool was already gone")

    async def replica() -> None:
        service = ChatService(vendors=fake.vendor_settings())
        await service.chat(_job("OpenAI"))
        service._providers = {"Broken": Broken(), **service._providers}
        openai = service._providers["OpenAI"]._client
        await service.aclose()
        assert openai.is_closed() and service.closed

    asyncio.run(replica())


def test_a_service_never_used_closes_cleanly(fake):
    service = ChatService(vendors=fake.vendor_settings())
    asyncio.run(service.aclose())
    assert service.closed


def test_providers_with_keys_names_only_those_with_a_key(fake):
    service = ChatService(vendors=fake.vendor_settings(anthropic_api_key=None, gemini_api_key=None))
    assert asyncio.run(service.providers_with_keys()) == ["MistralAI", "OpenAI"]
    assert asyncio.run(ChatService(vendors=fake.vendor_settings()).providers_with_keys()) == sorted(MODELS)
