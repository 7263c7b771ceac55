"""Web search through Tavily's official SDK (``tavily-python``'s ``AsyncTavilyClient``).

``POST {base}/search`` with ``Authorization: Bearer <key>``; the query is clipped to
:data:`MAX_QUERY_CHARS` (Tavily refuses longer ones) and ``max_results`` bounded to 1..10. Each
result becomes a ``Source(kind="web")`` (url, title, the content clipped to :data:`MAX_TEXT_CHARS`,
score). Errors leave as ``VendorError("Tavily", ...)``, mapped like the LLM providers': the SDK's
exceptions lose the response, so a response hook keeps the status and ``Retry-After`` of the call.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

import httpx
from tavily import AsyncTavilyClient
from tavily import errors as tavily_errors

from deployments.chat.messages import Source
from deployments.chat.providers.base import is_vendor_exception, parse_retry_after, sanitise, vendor_error
from deployments.errors import VendorError
from deployments.vendors import Endpoint

logger = logging.getLogger(__name__)

VENDOR = "Tavily"
MAX_QUERY_CHARS = 400
MAX_TEXT_CHARS = 2000
MAX_RESULTS = 10
DEFAULT_BASE_URL = "https://api.tavily.com"

#: The last response of the current task's search call (status and headers), for error mapping.
_last_response: contextvars.ContextVar[httpx.Response | None] = contextvars.ContextVar("tavily_last_response",
                                                                                        default=None)


async def _keep_response(response: httpx.Response) -> None:
    _last_response.set(response)


def clip_query(query: str) -> str:
    """The query with whitespace collapsed, cut at a word boundary to at most MAX_QUERY_CHARS."""
    query = " ".join(query.split())
    if len(query) <= MAX_QUERY_CHARS:
        return query
    cut = query[:MAX_QUERY_CHARS]
    return cut.rsplit(" ", 1)[0] if " " in cut else cut


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class WebSearch:
    """``search(query)`` → web ``Source``s, through Tavily."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        http = httpx.AsyncClient(base_url=endpoint.base_url or DEFAULT_BASE_URL, timeout=endpoint.timeout_seconds,
                                 event_hooks={"response": [_keep_response]})
        # An external client gets the SDK's headers (Authorization: Bearer <key>) and keeps our base URL.
        self._client = AsyncTavilyClient(api_key=endpoint.api_key or None, client=http)

    async def search(self, query: str, max_results: int = 5) -> list[Source]:
        """Up to ``max_results`` (1..10) web passages for ``query`` (clipped to 400 characters)."""
        if not self.endpoint.api_key:
            raise VendorError(VENDOR, "credentials", "no API key is configured")
        query = clip_query(query)
        if not query:
            return []
        max_results = min(max(int(max_results), 1), MAX_RESULTS)
        token = _last_response.set(None)
        try:
            answer = await self._client.search(query, max_results=max_results, search_depth="basic",
                                               timeout=min(self.endpoint.timeout_seconds, 120))
        except Exception as exc:
            raise self._error(exc) from None
        finally:
            _last_response.reset(token)
        return [self._source(item) for item in (answer or {}).get("results", [])[:max_results] if isinstance(item, dict)]

    def _error(self, exc: Exception) -> Exception:
        response = _last_response.get()
        if isinstance(exc, tavily_errors.TimeoutError):
            mapped = VendorError(VENDOR, "timeout", "")
        elif isinstance(exc, tavily_errors.UsageLimitExceededError):
            retry_after = parse_retry_after(response.headers) if response is not None else None
            mapped = VendorError(VENDOR, "rate_limited", "", retry_after)
        elif isinstance(exc, (tavily_errors.InvalidAPIKeyError, tavily_errors.ForbiddenError,
                              tavily_errors.MissingAPIKeyError)):
            mapped = VendorError(VENDOR, "credentials", "")
        elif isinstance(exc, tavily_errors.BadRequestError):
            mapped = VendorError(VENDOR, "rejected", sanitise(str(exc)))
        elif is_vendor_exception(exc):
            mapped = vendor_error(VENDOR, exc)
        else:
            return exc
        logger.warning("vendor call failed", extra={"vendor": VENDOR, "reason": mapped.reason,
                                                   "status": response.status_code if response is not None else None,
                                                   "error": type(exc).__name__})
        logger.debug("vendor error detail", exc_info=exc)
        return mapped

    @staticmethod
    def _source(item: dict[str, Any]) -> Source:
        score = item.get("score")
        return Source(kind="web", text=_clip(str(item.get("content") or ""), MAX_TEXT_CHARS),
                      score=float(score) if isinstance(score, (int, float)) else None,
                      url=str(item.get("url") or "") or None, title=str(item.get("title") or "") or None)

    async def aclose(self) -> None:
        await self._client._client.aclose()
