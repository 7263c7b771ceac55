"""Google Gemini through the official ``google-genai`` SDK: ``client.aio.models.generate_content_stream``.

Request (``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``, key in ``x-goog-api-key``):
``systemInstruction`` for the system message; ``contents`` with roles ``user`` / ``model``; a user
turn's images are ``inlineData`` parts (``mimeType``, base64 ``data``) after its text part;
``generationConfig`` ``temperature`` and ``maxOutputTokens``. Usage from the last ``usageMetadata``
seen: ``promptTokenCount`` and ``candidatesTokenCount`` (+ ``thoughtsTokenCount``, billed as output).
The SDK's retries are off (``HttpRetryOptions(attempts=1)``, which also stops its implicit retry of
connection errors); its timeout is in milliseconds.

The SDK is given its HTTP client (httpx) rather than its default aiohttp session: its stream is a
chain of nested generators, and closing the outer one leaves the HTTP response open until garbage
collection, so the vendor would keep generating for a client that went away. A response hook
remembers each task's open responses, and closing a stream early closes them at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import httpx
from google import genai
from google.genai import types

from deployments.chat.messages import ChatTurn, ProviderCall
from deployments.chat.providers.base import ChatProvider, UsageCount
from deployments.vendors import Endpoint


def gemini_contents(call: ProviderCall) -> list[types.Content]:
    """The turns as Gemini contents (assistant → ``model``)."""
    return [_content(turn) for turn in call.turns]


def _content(turn: ChatTurn) -> types.Content:
    parts = [types.Part.from_text(text=turn.text)] if turn.text or not turn.images else []
    if turn.role == "user":
        parts += [types.Part.from_bytes(data=image.data, mime_type=image.media_type) for image in turn.images]
    return types.Content(role="user" if turn.role == "user" else "model", parts=parts)


class GeminiProvider(ChatProvider):
    """``llm: "GeminiAI"``."""

    name = "GeminiAI"
    vendor = "gemini"

    def __init__(self, endpoint: Endpoint):
        super().__init__(endpoint)
        self._open: dict[asyncio.Task[object] | None, list[httpx.Response]] = {}
        self._http = httpx.AsyncClient(timeout=endpoint.timeout_seconds, event_hooks={"response": [self._opened]})
        options = types.HttpOptions(timeout=int(endpoint.timeout_seconds * 1000), httpx_async_client=self._http,
                                    retry_options=types.HttpRetryOptions(attempts=1))
        if endpoint.base_url:
            options.base_url = endpoint.base_url
        self._client = genai.Client(api_key=endpoint.api_key or "unset", http_options=options)

    async def _opened(self, response: httpx.Response) -> None:
        self._open.setdefault(asyncio.current_task(), []).append(response)

    async def _pieces(self, call: ProviderCall, usage: UsageCount) -> AsyncGenerator[str, None]:
        config = types.GenerateContentConfig(system_instruction=call.system or None, temperature=call.temperature,
                                             max_output_tokens=call.max_tokens)
        task = asyncio.current_task()
        try:
            stream = await self._client.aio.models.generate_content_stream(
                model=call.model, contents=gemini_contents(call), config=config)  # type: ignore[arg-type]
        except BaseException:
            await self._close_responses(task)
            raise
        try:
            async for chunk in stream:
                meta = chunk.usage_metadata
                if meta is not None and (meta.prompt_token_count is not None or meta.candidates_token_count is not None):
                    usage.set(meta.prompt_token_count, (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0))
                candidate = chunk.candidates[0] if chunk.candidates else None
                if candidate is None or candidate.content is None:
                    continue
                for part in candidate.content.parts or []:
                    if part.text and not part.thought:
                        yield part.text
        finally:
            await self._close_responses(task)
            await stream.aclose()  # type: ignore[attr-defined]

    async def _close_responses(self, task: asyncio.Task[object] | None) -> None:
        for response in self._open.pop(task, []):
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()
