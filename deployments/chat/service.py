"""The chat service deployment: runs one conversation with its tools and its provider.

Plain class; the builder binds it (on the control pool, not GPU-pinned) with the handles of
the document store and of the ``Local`` provider's LLM family, and gives it — only it — the
LLM vendors' and Tavily's keys. For a :class:`~deployments.chat.messages.ChatJob` it

1. runs the tools: ``DBSearch`` asks the document store for the passages of the tenant's
   ``pdf_references`` nearest the last user turn; ``InternetSearch`` asks Tavily;
2. gives the passages to the model as quoted, untrusted data: fenced and escaped in a user message
   of their own before the last user turn, never in the system message (:mod:`.passages`);
3. streams the provider's reply: a :class:`Retrieved` event first (when a tool ran), then
   :class:`TextDelta` pieces, then one :class:`Usage`.

``stream`` is a streaming method (callers use ``handle.options(stream=True)``); when the
caller goes away Serve cancels it here, which closes the vendor's HTTP stream or cancels
the LLM replica's generator, so a disconnected client stops the generation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from deployments.chat.messages import (
    ChatEvent,
    ChatJob,
    ChatReply,
    ProviderCall,
    Retrieved,
    Source,
    TextDelta,
    Usage,
)
from deployments.chat.passages import fit, system_message, with_passages
from deployments.errors import InvalidJobError, JobError, VendorError
from deployments.vendors import VendorSettings

logger = logging.getLogger(__name__)

def _job_error(exc: BaseException) -> JobError | None:
    """A deployment's own error in an exception from a handle call (wrapped by Ray, or as raised)."""
    cause = exc if isinstance(exc, JobError) else getattr(exc, "cause", None)
    return cause if isinstance(cause, JobError) else None


class LocalProvider:
    """The ``Local`` provider: the LLM family's deployment, streamed by handle."""

    name = "Local"

    def __init__(self, handle: Any):
        self.handle = handle

    async def stream(self, call: ProviderCall) -> AsyncIterator[ChatEvent]:
        response = self.handle.options(stream=True).generate.remote(call)
        try:
            async for event in response:
                yield event
        except asyncio.CancelledError:
            response.cancel()
            raise
        except GeneratorExit:
            response.cancel()
            raise
        except Exception as exc:
            if (own := _job_error(exc)) is not None:
                raise own from None
            logger.warning("the local LLM deployment failed", exc_info=exc)
            raise VendorError("Local", "unavailable", "the local model is not available") from None


class ChatService:
    """Serve deployment: ``stream(job)``, ``chat(job)``, ``enhance(...)``."""

    def __init__(self, *, local_llm: Any = None, documents: Any = None, web_results: int = 5,
                 vendors: VendorSettings | None = None):
        from deployments.replica import prepare_replica

        prepare_replica()
        self.local_llm = local_llm
        self.documents = documents
        self.web_results = web_results
        self.vendors = vendors if vendors is not None else VendorSettings()
        self._providers: dict[str, Any] = {}
        self._search: Any = None
        self._closed = False
        # Ray Serve awaits the replica's ``__del__`` when it stops it (an ``async def`` is awaited);
        # an instance attribute, so that Python's garbage collector, which cannot await, never calls it.
        self.__del__ = self.aclose

    # -- providers and tools -------------------------------------------------
    def provider(self, name: str) -> Any:
        """The adapter for ``llm`` = ``name`` (made once per replica)."""
        if self._closed:
            raise VendorError(name, "unavailable", "this replica is stopping")
        if name not in self._providers:
            if name == "Local":
                if self.local_llm is None:
                    raise VendorError("Local", "unavailable", "no local model is deployed")
                self._providers[name] = LocalProvider(self.local_llm)
            else:
                from deployments.chat.providers import PROVIDERS

                cls = PROVIDERS[name]
                endpoint = self.vendors.endpoint(cls.vendor)
                if not endpoint.api_key:
                    raise VendorError(name, "credentials", "no API key is configured")
                self._providers[name] = cls(endpoint)
        return self._providers[name]

    async def providers_with_keys(self) -> list[str]:
        """The vendor providers (``llm`` values) whose API key this replica holds — names, never keys: the
        ingress asks, so that a request for a provider without one is refused before its images are decoded."""
        from deployments.chat.providers import PROVIDERS

        return sorted(name for name, cls in PROVIDERS.items() if self.vendors.endpoint(cls.vendor).api_key)

    def web_search(self) -> Any:
        if self._closed:
            raise VendorError("Tavily", "unavailable", "this replica is stopping")
        if self._search is None:
            from deployments.chat.search import WebSearch

            endpoint = self.vendors.endpoint("tavily")
            if not endpoint.api_key:
                raise VendorError("Tavily", "credentials", "no API key is configured")
            self._search = WebSearch(endpoint)
        return self._search

    async def retrieve(self, job: ChatJob) -> tuple[Source, ...]:
        """The passages the job's tools find for its last user turn (documents first)."""
        query = job.turns[-1].text.strip() if job.turns else ""
        if not query and (job.documents or job.internet_search):
            raise InvalidJobError("history", "a search tool needs text in the last user turn (it is the query)")
        found: list[Source] = []
        if job.documents:
            if self.documents is None:
                raise VendorError("QdrantDB", "unavailable", "the document store is not deployed")
            try:
                found += await self.documents.search.remote(job.tenant, list(job.documents), query, job.context_chunks)
            except Exception as exc:
                if (own := _job_error(exc)) is not None:
                    raise own from None
                raise
        if job.internet_search:
            found += await self.web_search().search(query, self.web_results)
        return tuple(found)

    # -- the calls -----------------------------------------------------------
    async def stream(self, job: ChatJob) -> AsyncGenerator[ChatEvent | Retrieved, None]:
        """Retrieved passages (when a tool ran), the reply's pieces, then its usage."""
        sources = fit(await self.retrieve(job))  # what the model is given is what the client is told
        if job.documents or job.internet_search:
            yield Retrieved(sources)
        call = ProviderCall(model=job.model, system=system_message(job.system, sources),
                            turns=with_passages(job.turns, sources), temperature=job.temperature,
                            max_tokens=job.max_tokens)
        provider = self.provider(job.provider)
        usage_seen = False
        async with aclosing(provider.stream(call)) as events:
            async for event in events:
                if isinstance(event, Usage):
                    usage_seen = True
                yield event
        if not usage_seen:
            yield Usage(0, 0)
        logger.info("chat done", extra={"studio_task_id": job.request_id, "tenant": job.tenant,
                                        "llm": job.provider, "llm_model": job.model, "sources": len(sources)})

    async def chat(self, job: ChatJob) -> ChatReply:
        """The whole reply at once."""
        pieces: list[str] = []
        usage = Usage(0, 0)
        sources: tuple[Source, ...] = ()
        async with aclosing(self.stream(job)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    pieces.append(event.text)
                elif isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Retrieved):
                    sources = event.sources
        return ChatReply("".join(pieces), usage, sources)

    async def enhance(self, provider: str, model: str, system: str, prompt: str, max_tokens: int,
                      temperature: float) -> ChatReply:
        """``enhance_prompt``: the prompt rewritten by a chat model (stripped of quotes and blank lines)."""
        from deployments.chat.messages import ChatTurn

        job = ChatJob(request_id="enhance", tenant="", provider=provider, model=model, temperature=temperature,
                      system=system, turns=(ChatTurn("user", prompt),), max_tokens=max_tokens)
        reply = await self.chat(job)
        text = " ".join(reply.text.split()).strip().strip('"').strip()
        if not text:
            raise VendorError(provider, "rejected", "the model returned an empty prompt")
        return ChatReply(text, reply.usage)

    async def aclose(self) -> None:
        """Close every SDK client this replica opened (each vendor's HTTP connection pool); later calls
        do nothing. Serve calls this as ``__del__`` when the replica stops, after its requests drained."""
        if self._closed:
            return
        self._closed = True
        clients = [*self._providers.values(), *([self._search] if self._search is not None else [])]
        self._providers.clear()
        self._search = None
        for client in clients:
            close = getattr(client, "aclose", None)  # the Local provider holds a handle, no connection
            if close is None:
                continue
            try:
                await close()
            except Exception:  # one client failing to close must not keep the others open
                logger.warning("closing a vendor client failed", exc_info=True,
                               extra={"vendor": getattr(client, "name", type(client).__name__)})
        logger.info("chat service closed", extra={"clients": len(clients)})

    @property
    def closed(self) -> bool:
        return self._closed

    async def check_health(self) -> None:
        """Nothing to load: healthy while the replica answers."""
        return None
