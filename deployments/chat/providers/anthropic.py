"""Anthropic (Claude) through the official ``anthropic`` SDK: ``messages.create(stream=True)``.

Request: ``system`` top-level; the turns as ``messages``; a user turn with images has content blocks
(one ``image`` block per image, ``source`` ``{"type": "base64", "media_type", "data"}``, then the
``text`` block, the order Anthropic recommends); ``max_tokens`` (required by the API).

**Decision**: no ``temperature``. The SDK (2.x) speaks API version 2026-10-21, which answers 400 to any
sampling parameter (``temperature``, ``top_p``, ``top_k``) on every Claude model, and no longer offers
them; the contract's ``temperature`` is therefore not sent to Anthropic. (The SDK also sends the key as
``Authorization: Bearer``, which the API accepts besides the documented ``x-api-key``.)
Usage: ``message_start``'s ``input_tokens`` (plus cache reads/writes) and ``message_delta``'s
cumulative ``output_tokens``. An ``error`` event in the stream (e.g. ``overloaded_error``) is raised by
the SDK and mapped like the HTTP status it stands for.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator
from typing import Any, cast

from anthropic import AsyncAnthropic, omit
from anthropic.types import RawContentBlockDeltaEvent, RawMessageDeltaEvent, RawMessageStartEvent
from anthropic.types import TextDelta as AnthropicTextDelta

from deployments.chat.messages import ChatTurn, ProviderCall
from deployments.chat.providers.base import ChatProvider, UsageCount
from deployments.vendors import Endpoint


def anthropic_messages(call: ProviderCall) -> list[dict[str, Any]]:
    """The turns as Anthropic messages."""
    return [_message(turn) for turn in call.turns]


def _message(turn: ChatTurn) -> dict[str, Any]:
    if turn.role != "user" or not turn.images:
        return {"role": turn.role, "content": turn.text}
    blocks: list[dict[str, Any]] = [
        {"type": "image", "source": {"type": "base64", "media_type": image.media_type,
                                     "data": base64.b64encode(image.data).decode("ascii")}}
        for image in turn.images]
    if turn.text:
        blocks.append({"type": "text", "text": turn.text})
    return {"role": "user", "content": blocks}


def _prompt_tokens(usage: Any) -> int:
    return sum(int(getattr(usage, name, None) or 0)
               for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))


class AnthropicProvider(ChatProvider):
    """``llm: "ClaudeAI"``."""

    name = "ClaudeAI"
    vendor = "anthropic"

    def __init__(self, endpoint: Endpoint):
        super().__init__(endpoint)
        self._client = AsyncAnthropic(api_key=endpoint.api_key or "unset", base_url=endpoint.base_url,
                                      timeout=endpoint.timeout_seconds, max_retries=0)

    async def _pieces(self, call: ProviderCall, usage: UsageCount) -> AsyncGenerator[str, None]:
        stream = await self._client.messages.create(
            model=call.model, messages=cast(Any, anthropic_messages(call)),
            system=call.system or omit, max_tokens=call.max_tokens, stream=True)
        prompt = 0
        async with stream:
            async for event in stream:
                if isinstance(event, RawMessageStartEvent):
                    prompt = _prompt_tokens(event.message.usage)
                    usage.set(prompt, event.message.usage.output_tokens)
                elif isinstance(event, RawContentBlockDeltaEvent) and isinstance(event.delta, AnthropicTextDelta):
                    yield event.delta.text
                elif isinstance(event, RawMessageDeltaEvent):
                    if event.usage.input_tokens is not None:
                        prompt = _prompt_tokens(event.usage)
                    usage.set(prompt, event.usage.output_tokens)

    async def aclose(self) -> None:
        await self._client.close()
