"""The chat provider interface and the one mapping of vendor SDK errors to :class:`VendorError`.

A provider streams a :class:`ProviderCall` through its vendor's official SDK: the reply's pieces
(:class:`TextDelta`, in order), then exactly one :class:`Usage`. SDK retries are off (the client
retries, told when by ``Retry-After``) and every SDK call is bounded by ``endpoint.timeout_seconds``.
Any SDK or transport failure, before or in the middle of the stream, leaves as a ``VendorError``
(:func:`vendor_error`); the full error is logged at debug level only, as it may quote URLs.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, ClassVar

from deployments.chat.messages import ChatEvent, ProviderCall, TextDelta, Usage
from deployments.errors import VendorError, VendorReason
from deployments.vendors import Endpoint

logger = logging.getLogger(__name__)

#: Longest ``detail`` a VendorError carries (the vendor's own message, sanitised).
DETAIL_LIMIT = 200
#: Longest wait a vendor's ``Retry-After`` is believed for.
MAX_RETRY_AFTER = 3600.0

#: Packages whose exceptions are a vendor call's failure (anything else is our bug and propagates).
_VENDOR_MODULES = frozenset({"openai", "anthropic", "mistralai", "google", "tavily", "httpx", "httpx2", "httpcore",
                             "httpcore2", "aiohttp", "h11"})

#: An error's type as the vendor names it in the body (used when there is no HTTP status: in-stream errors).
_KIND_REASONS: dict[str, VendorReason] = {
    "rate_limit_error": "rate_limited", "rate_limit_exceeded": "rate_limited", "requests": "rate_limited",
    "tokens": "rate_limited", "resource_exhausted": "rate_limited", "insufficient_quota": "rate_limited",
    "overloaded_error": "unavailable", "api_error": "unavailable", "server_error": "unavailable",
    "unavailable": "unavailable", "internal": "unavailable",
    "authentication_error": "credentials", "permission_error": "credentials", "invalid_api_key": "credentials",
    "unauthenticated": "credentials", "permission_denied": "credentials", "api_key_invalid": "credentials",
    "invalid_request_error": "rejected", "not_found_error": "rejected", "request_too_large": "rejected",
    "invalid_argument": "rejected", "not_found": "rejected", "failed_precondition": "rejected",
    "timeout_error": "timeout", "deadline_exceeded": "timeout",
}

_URL = re.compile(r"\b[a-z][a-z0-9+.\-]*://\S+", re.IGNORECASE)
_BEARER = re.compile(r"\bBearer\s+\S+", re.IGNORECASE)
_KEYISH = re.compile(
    r"\b(?:sk|pk|rk|tvly|key|api[_\-]?key)[\-_][A-Za-z0-9_\-*.]{6,}"  # sk-..., tvly-..., key_...
    r"|\bAIza[0-9A-Za-z_\-]{10,}"  # Google API keys
    r"|\b(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{24,}"  # long mixed tokens
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?"  # IP addresses
)


def sanitise(text: str, limit: int = DETAIL_LIMIT) -> str:
    """``text`` without URLs, keys or tokens, whitespace collapsed, clipped to ``limit`` characters."""
    text = _URL.sub("[url]", text)
    text = _BEARER.sub("Bearer [redacted]", text)
    text = _KEYISH.sub("[redacted]", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait per ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    try:
        millis, value = headers.get("retry-after-ms"), headers.get("retry-after")
    except Exception:  # not a mapping of headers
        return None
    seconds: float | None = None
    if millis:
        try:
            seconds = float(millis) / 1000
        except ValueError:
            seconds = None
    if seconds is None and value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError, IndexError, OverflowError):
                seconds = None
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _google_retry_delay(body: Any) -> float | None:
    """Gemini's ``google.rpc.RetryInfo`` ``retryDelay`` ("7s", "0.5s") in an error body, if any."""
    error = body.get("error") if isinstance(body, dict) else None
    details = (error if isinstance(error, dict) else body if isinstance(body, dict) else {}).get("details")
    for item in details if isinstance(details, list) else []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = re.fullmatch(r"\s*([0-9.]+)s\s*", str(item.get("retryDelay", "")))
            if match:
                return min(float(match.group(1)), MAX_RETRY_AFTER)
    return None


def is_vendor_exception(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a vendor SDK or the HTTP stack (anything else is a bug and propagates)."""
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    return any(cls.__module__.split(".")[0] in _VENDOR_MODULES for cls in type(exc).__mro__)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or any("Timeout" in cls.__name__ for cls in type(exc).__mro__)


def _status(exc: BaseException) -> int | None:
    for value in (getattr(exc, "status_code", None), getattr(exc, "code", None),
                  getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _headers(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return headers if headers is not None else getattr(exc, "headers", None)


def _body(exc: BaseException) -> Any:
    body = getattr(exc, "body", None)
    if body is None:
        body = getattr(exc, "details", None)  # google-genai keeps the JSON body there
    if body is None and type(exc).__name__ == "HTTPStatusError":
        try:
            body = exc.response.json()  # type: ignore[attr-defined]
        except Exception:
            body = None
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            body = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return body


def _message(body: Any, exc: BaseException) -> str:
    """The vendor's human message in its error body (OpenAI/Anthropic/Gemini ``error.message``, Mistral
    ``message``, Tavily ``detail.error``, a validation error's first ``msg``)."""
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
        detail = body.get("detail")
        if isinstance(detail, Mapping) and isinstance(detail.get("error"), str):
            return detail["error"]
        if isinstance(detail, list) and detail and isinstance(detail[0], Mapping):
            return str(detail[0].get("msg", ""))
        if isinstance(detail, str):
            return detail
        return ""
    if isinstance(body, str):
        return body
    return str(getattr(exc, "message", "") or "")


def _kinds(body: Any) -> list[str]:
    """The vendor's own names for the error in its body (type, status, code, ErrorInfo reasons), lower-cased."""
    found: list[str] = []
    for holder in (body, body.get("error") if isinstance(body, Mapping) else None):
        if not isinstance(holder, Mapping):
            continue
        for key in ("type", "status", "code"):
            if isinstance(holder.get(key), str):
                found.append(holder[key].lower())
        details = holder.get("details")
        for item in details if isinstance(details, list) else []:
            if isinstance(item, Mapping) and isinstance(item.get("reason"), str):
                found.append(item["reason"].lower())
    return found


def reason_for(status: int | None, kinds: list[str]) -> VendorReason:
    """The reason for an HTTP ``status`` (or, without one, the vendor's error ``kinds``)."""
    if any(_KIND_REASONS.get(kind) == "credentials" for kind in kinds):
        return "credentials"  # e.g. Gemini's bad key: a 400 with reason API_KEY_INVALID
    if status is not None and 400 <= status <= 599:
        if status == 429:
            return "rate_limited"
        if status in (401, 403):
            return "credentials"
        if status == 408:
            return "timeout"
        if status >= 500:
            return "unavailable"
        return "rejected"
    for kind in kinds:
        if kind in _KIND_REASONS:
            return _KIND_REASONS[kind]
    return "unavailable"


def vendor_error(vendor: str, exc: BaseException) -> VendorError:
    """``exc`` (raised by ``vendor``'s SDK or its HTTP stack) as a VendorError. Timeouts → ``timeout``;
    429 → ``rate_limited``; 5xx/529 and dropped connections → ``unavailable``; 401/403 → ``credentials``;
    other 4xx → ``rejected`` with the vendor's message, sanitised. Retry-After is kept when given."""
    if isinstance(exc, VendorError):
        return exc
    status = _status(exc)
    if _is_timeout(exc) and (status is None or status < 400):
        return VendorError(vendor, "timeout", "")
    body = _body(exc)
    reason = reason_for(status, _kinds(body))
    retry_after = parse_retry_after(_headers(exc))
    if retry_after is None:
        retry_after = _google_retry_delay(body)
    detail = sanitise(_message(body, exc)) if reason == "rejected" else ""
    return VendorError(vendor, reason, detail, retry_after if reason in ("rate_limited", "unavailable") else None)


@dataclass
class UsageCount:
    """The token counts a provider fills in while it streams."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seen: bool = False

    def set(self, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.prompt_tokens = int(prompt_tokens or 0)
        self.completion_tokens = int(completion_tokens or 0)
        self.seen = True


class ChatProvider(ABC):
    """One LLM vendor behind its official SDK."""

    #: The contract's ``llm`` value ("OpenAI", "ClaudeAI", "MistralAI", "GeminiAI"); also the vendor named in errors.
    name: ClassVar[str]
    #: The ``deployments.vendors`` key of its endpoint.
    vendor: ClassVar[str]

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint

    async def stream(self, call: ProviderCall) -> AsyncIterator[ChatEvent]:
        """The reply's pieces in order, then exactly one Usage. Raises VendorError."""
        if not self.endpoint.api_key:
            raise VendorError(self.name, "credentials", "no API key is configured")
        usage = UsageCount()
        try:
            async with aclosing(self._pieces(call, usage)) as pieces:
                async for piece in pieces:
                    if piece:
                        yield TextDelta(piece)
        except Exception as exc:
            if not is_vendor_exception(exc) or isinstance(exc, VendorError):
                raise
            mapped = vendor_error(self.name, exc)
            logger.warning("vendor call failed", extra={"vendor": self.name, "reason": mapped.reason,
                                                       "status": _status(exc), "error": type(exc).__name__})
            logger.debug("vendor error detail", exc_info=exc)
            raise mapped from None
        if not usage.seen:
            logger.warning("vendor sent no usage", extra={"vendor": self.name, "model": call.model})
        yield Usage(usage.prompt_tokens, usage.completion_tokens)

    @abstractmethod
    def _pieces(self, call: ProviderCall, usage: UsageCount) -> AsyncGenerator[str, None]:
        """The reply's text pieces from the SDK's stream (an async generator that closes the SDK stream
        when it is closed early); sets ``usage`` from the vendor's counts."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the SDK client's connections."""
