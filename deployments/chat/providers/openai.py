"""OpenAI through the official ``openai`` SDK: ``chat.completions.create(stream=True)``.

Request: the system message first (role ``system``), then the turns; a user turn with images has
content parts (``text``, then one ``image_url`` per image, a ``data:`` URL with the image's ``detail``);
``max_completion_tokens`` (OpenAI's replacement of the deprecated ``max_tokens``) and
``stream_options.include_usage``, so the last chunk (empty ``choices``) carries ``usage``.

**Decision**: ``temperature`` is sent except to the reasoning models (``o1``, ``o3``, ``o4-mini``, ...,
``gpt-5`` and later), which answer 400 to any value but their default; those run at their default.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

from openai import AsyncOpenAI, omit

from deployments.chat.messages import ChatImage, ProviderCall
from deployments.chat.providers.base import ChatProvider, UsageCount
from deployments.vendors import Endpoint

#: Models that refuse a temperature other than their default (OpenAI's reasoning models).
FIXED_TEMPERATURE_MODELS = re.compile(r"^(?:o\d|gpt-(?:[5-9]|\d{2,}))", re.IGNORECASE)


def data_url(data: bytes, media_type: str) -> str:
    """``data:<media type>;base64,<data>``."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def chat_messages(call: ProviderCall, image_url: Callable[[ChatImage], Any]) -> list[dict[str, Any]]:
    """The call as chat-completions messages (OpenAI's and Mistral's shape); ``image_url`` makes an
    image part's ``image_url`` value, the one place the two differ."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": call.system}] if call.system else []
    for turn in call.turns:
        if turn.role != "user" or not turn.images:
            messages.append({"role": turn.role, "content": turn.text})
            continue
        parts: list[dict[str, Any]] = [{"type": "text", "text": turn.text}] if turn.text else []
        parts += [{"type": "image_url", "image_url": image_url(image)} for image in turn.images]
        messages.append({"role": "user", "content": parts})
    return messages


def openai_messages(call: ProviderCall) -> list[dict[str, Any]]:
    """The call as OpenAI chat messages (images with their ``detail``)."""
    return chat_messages(call, lambda image: {"url": data_url(image.data, image.media_type), "detail": image.detail})


class OpenAIProvider(ChatProvider):
    """``llm: "OpenAI"``."""

    name = "OpenAI"
    vendor = "openai"

    def __init__(self, endpoint: Endpoint):
        super().__init__(endpoint)
        self._client = AsyncOpenAI(api_key=endpoint.api_key or "unset", base_url=endpoint.base_url,
                                   timeout=endpoint.timeout_seconds, max_retries=0)

    async def _pieces(self, call: ProviderCall, usage: UsageCount) -> AsyncGenerator[str, None]:
        stream = await self._client.chat.completions.create(
            model=call.model, messages=cast(Any, openai_messages(call)),
            temperature=omit if FIXED_TEMPERATURE_MODELS.match(call.model) else call.temperature,
            max_completion_tokens=call.max_tokens, stream=True, stream_options={"include_usage": True})
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage.set(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.index == 0 and choice.delta is not None and choice.delta.content:
                        yield choice.delta.content

    async def aclose(self) -> None:
        await self._client.close()
