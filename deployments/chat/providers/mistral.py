"""Mistral AI through the official ``mistralai`` SDK: ``Mistral(...).chat.stream_async``.

Request (``POST /v1/chat/completions`` with ``stream: true``): the system message first, then the
turns; a user turn with images has content chunks (``text``, then ``{"type": "image_url",
"image_url": "data:<type>;base64,..."}`` per image); ``max_tokens``, ``temperature``. The reply's
pieces come from each chunk's ``choices[0].delta.content``; usage from the chunk that carries it (the last).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, cast

from mistralai.client import Mistral
from mistralai.client.utils import BackoffStrategy, RetryConfig

from deployments.chat.messages import ProviderCall
from deployments.chat.providers.base import ChatProvider, UsageCount
from deployments.chat.providers.openai import chat_messages, data_url
from deployments.vendors import Endpoint

#: The SDK's own retries are off: the client retries (told when by Retry-After).
NO_RETRIES = RetryConfig("none", BackoffStrategy(500, 1000, 1.5, 1000), retry_connection_errors=False)


def mistral_messages(call: ProviderCall) -> list[dict[str, Any]]:
    """The call as Mistral chat messages (an image part's ``image_url`` is the data URL itself)."""
    return chat_messages(call, lambda image: data_url(image.data, image.media_type))


def _delta_text(content: Any) -> str:
    """A delta's content: a string, or chunks of which the ``text`` ones count (not e.g. ``thinking``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(getattr(chunk, "text", "") for chunk in content if getattr(chunk, "type", None) == "text")
    return ""


class MistralProvider(ChatProvider):
    """``llm: "MistralAI"``."""

    name = "MistralAI"
    vendor = "mistral"

    def __init__(self, endpoint: Endpoint):
        super().__init__(endpoint)
        self._client = Mistral(api_key=endpoint.api_key or "unset", server_url=endpoint.base_url,
                               timeout_ms=int(endpoint.timeout_seconds * 1000), retry_config=NO_RETRIES)

    async def _pieces(self, call: ProviderCall, usage: UsageCount) -> AsyncGenerator[str, None]:
        stream = await self._client.chat.stream_async(
            model=call.model, messages=cast(Any, mistral_messages(call)),
            temperature=call.temperature, max_tokens=call.max_tokens)
        async with stream:
            async for event in stream:
                chunk = event.data
                if chunk.usage is not None:
                    usage.set(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.index == 0:
                        yield _delta_text(choice.delta.content)

    async def aclose(self) -> None:
        # The SDK opens a sync and an async httpx client; its async exit closes only the async one.
        await self._client.__aexit__(None, None, None)
        self._client.__exit__(None, None, None)
