"""The ChatBot routes: ``chat`` (the whole reply in the envelope) and ``streamChat`` (NDJSON).

Both read either request shape of the contract (``ingress.contract.schemas.chat``), turn it
into a :class:`~deployments.chat.messages.ChatJob` (``ingress.chat_jobs``: history rules,
``llm_model`` per provider, images fetched under the image rules) and call the chat service
deployment, which runs the tools and the provider.

``streamChat`` answers one JSON object per line: ``{"output": "<piece>"}`` as the model writes,
then ``{"output": null, "promptTokens": n, "completionTokens": m}`` (plus ``sources`` when a tool
retrieved passages). An error before the first piece is the usual envelope with its status; an
error after it is a last line ``{"output": null, "promptTokens": null, "completionTokens": null,
"error": ..., "error_data": ...}``. The tools' passages are held back until the provider's first
piece, so a provider that fails at once still answers with its own status. A client that
disconnects cancels the call, which stops the provider's stream or the local model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from deployments.chat.messages import ChatJob, Retrieved, Source, TextDelta, Usage
from deployments.errors import VendorError
from ingress.chat_jobs import ChatLimits, ChatPlan, load_chat_job, plan_chat_job, provider_models, redact_chat
from ingress.contract.auth import Tenant
from ingress.contract.envelopes import envelope_response
from ingress.contract.errors import NotFound, StudioError, Timeout
from ingress.contract.metrics import label_request
from ingress.contract.routes.context import BodyReader, Studio
from ingress.contract.routes.docs import model_body, responses
from ingress.contract.schemas.chat import ChatRequest, parse_chat_request
from ingress.contract.schemas.envelope import ChatEnvelope
from ingress.dispatch import map_call_error, service_call, vendor_error

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


def source_json(source: Source) -> dict[str, Any]:
    """A retrieved passage as the envelope shows it (no empty fields)."""
    return {k: v for k, v in dataclasses.asdict(source).items() if v is not None}


class ProviderKeys:
    """Which vendor providers have their key (only the chat service holds the keys): asked of it, and
    remembered for ``ttl`` seconds, so a request for a provider without a key is refused (502, as the
    chat service would) before any of its images is decoded. Not knowing (the service did not answer)
    leaves the decision to the chat service."""

    def __init__(self, ask: Callable[[], Any], ttl: float = 30.0):
        self.ask = ask
        self.ttl = ttl
        self._known: frozenset[str] | None = None
        self._until = 0.0
        self._lock = asyncio.Lock()

    async def check(self, provider: str) -> None:
        if provider == "Local":
            return
        ready = await self._ready()
        if ready is not None and provider not in ready:
            raise vendor_error(VendorError(provider, "credentials", "no API key is configured"))

    async def _ready(self) -> frozenset[str] | None:
        async with self._lock:
            if self._known is None or time.monotonic() >= self._until:
                try:
                    self._known = frozenset(await asyncio.wait_for(self.ask(), 5))
                    self._until = time.monotonic() + self.ttl
                except Exception:
                    log.warning("the chat service did not say which providers have keys", exc_info=True)
                    return None
            return self._known


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


def router(studio: Studio, read_body: BodyReader) -> APIRouter:
    api = APIRouter(tags=["chat"])
    settings = studio.settings

    def chat_config():
        config = studio.registry.config.chat
        if config is None or studio.chat is None:
            raise NotFound("the chat API is not enabled on this deployment")
        return config

    # Read once from the registry: the providers' models and the bounds. Whether Tavily has a key is
    # the chat service's secret: it answers that one (502) itself.
    config = studio.registry.config.chat
    providers = provider_models(config) if config is not None else {}
    limits = (ChatLimits.from_config(config, documents_enabled=studio.documents is not None)
              if config is not None else None)

    keys = ProviderKeys(lambda: studio.chat.providers_with_keys.remote())

    @asynccontextmanager
    async def prepare(request: Request, tenant: str) -> AsyncIterator[tuple[ChatRequest, ChatJob, ChatPlan]]:
        """Every check that costs nothing first (the rules, the provider's key, the tenant's token
        budget), then the images, decoded under the replica's budget until the request ends."""
        chat_config()
        assert limits is not None  # chat_config() refused a deployment without a chat config
        req = parse_chat_request(await read_body(request, settings.max_image_body_bytes))
        plan = plan_chat_job(req, tenant, uuid.uuid4().hex, providers, limits)
        label_request(request, studio_task_id=plan.request_id, family_deployment="chat")
        await keys.check(plan.provider)
        if studio.admission is not None:
            await studio.admission.check(tenant, {"chat_tokens": plan.token_estimate()})
        async with studio.images() as images:
            yield req, await load_chat_job(plan, limits, images), plan

    def settle(tenant: str, plan: ChatPlan, usage: Usage | None) -> None:
        """The tokens really used against those admitted (a failed call uses none)."""
        if studio.admission is not None:
            used = usage.prompt_tokens + usage.completion_tokens if usage is not None else 0
            studio.admission.settle(tenant, "chat_tokens", used - plan.token_estimate())

    def doc(summary: str, stream: bool) -> dict[str, Any]:
        ok = ({"description": "NDJSON: `{\"output\": \"<piece>\"}` lines, then `{\"output\": null, \"promptTokens\": n, "
                              "\"completionTokens\": m}`.", "content": {NDJSON: {"schema": {"type": "string"}}}}
              if stream else {"description": "The assistant's reply in `output`, with the token usage."})
        return {
            "summary": summary,
            "response_model": None if stream else ChatEnvelope,
            "responses": {200: ok, **responses(settings, 401, 404, 408, 413, 422, 429, 500, 503, 504,
                                               body_bytes=settings.max_image_body_bytes)},
            "openapi_extra": model_body(ChatRequest),
        }

    @api.post("/chat", **doc("ChatBot", stream=False))
    async def chat(request: Request, tenant: Tenant):
        started = time.perf_counter()
        async with prepare(request, tenant) as (req, job, plan):
            reply = None
            try:
                reply = await service_call(studio.chat.chat.remote(job), "chat", chat_config().timeout_seconds,
                                           settings.retry_after_seconds)
            finally:
                settle(tenant, plan, reply.usage if reply is not None else None)
        env = ChatEnvelope(
            time_required=round(time.perf_counter() - started, 4), input=redact_chat(req), output=reply.text,
            task_id=job.request_id, status="SUCCESS", promptTokens=reply.usage.prompt_tokens,
            completionTokens=reply.usage.completion_tokens,
            meta={"llm": job.provider, "llm_model": job.model, "sources": [source_json(s) for s in reply.sources]},
        )
        return envelope_response(env)

    @api.post("/streamChat", **doc("ChatBot, streamed as JSON lines", stream=True))
    async def stream_chat(request: Request, tenant: Tenant):
        async with prepare(request, tenant) as (_, job, plan):
            timeout = chat_config().timeout_seconds
            response = studio.chat.options(stream=True).stream.remote(job)
        events = response.__aiter__()
        deadline = time.monotonic() + timeout
        held: tuple[Source, ...] | None = None
        try:  # the first piece (or the call's error) before answering: errors keep their status
            first = await asyncio.wait_for(events.__anext__(), timeout)
            while isinstance(first, Retrieved):  # the tools' passages come before the provider answers: hold them
                held = first.sources
                first = await asyncio.wait_for(events.__anext__(), max(deadline - time.monotonic(), 0.001))
        except StopAsyncIteration:
            first = Usage(0, 0)
        except TimeoutError:
            response.cancel()
            settle(tenant, plan, None)
            raise Timeout(f"chat did not answer within {timeout:g} s") from None
        except BaseException as exc:  # a client gone before the first piece (CancelledError) cancels the call too
            response.cancel()
            settle(tenant, plan, None)
            if not isinstance(exc, Exception):
                raise
            raise map_call_error(exc, "chat", settings.retry_after_seconds) from None
        lines = _ndjson(first, events, response, deadline, settings.retry_after_seconds, held,
                        on_end=lambda usage: settle(tenant, plan, usage))
        return StreamingResponse(lines, media_type=NDJSON, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return api


async def _ndjson(first: Any, events: AsyncIterator[Any], response: Any, deadline: float,
                  retry_after: int, sources: tuple[Source, ...] | None = None,
                  on_end: Callable[[Usage | None], None] | None = None) -> AsyncIterator[bytes]:
    """The stream's lines; closing it early (a client that went away) cancels the chat call.
    ``on_end`` gets the call's usage (None: it did not finish) once the stream is over."""
    event = first
    done = False
    usage: Usage | None = None
    try:
        while True:
            if isinstance(event, Retrieved):
                sources = event.sources
            elif isinstance(event, TextDelta):
                if event.text:
                    yield _line({"output": event.text})
            elif isinstance(event, Usage):
                usage = event
                last: dict[str, Any] = {"output": None, "promptTokens": event.prompt_tokens,
                                        "completionTokens": event.completion_tokens}
                if sources is not None:
                    last["sources"] = [source_json(s) for s in sources]
                yield _line(last)
                done = True
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                event = await asyncio.wait_for(events.__anext__(), left)
            except StopAsyncIteration:
                event = Usage(0, 0)  # the service always ends with a Usage; never leave the client hanging
    except TimeoutError:
        yield _line({"output": None, "promptTokens": None, "completionTokens": None, "error": "Timeout",
                     "error_data": "chat did not finish in time"})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        mapped = map_call_error(exc, "chat", retry_after)
        error = mapped if isinstance(mapped, StudioError) else None
        yield _line({"output": None, "promptTokens": None, "completionTokens": None,
                     "error": error.error_type if error else "InternalError",
                     "error_data": error.message if error else "the chat stream failed"})
    finally:
        if not done:
            response.cancel()
        if on_end is not None:
            on_end(usage)
