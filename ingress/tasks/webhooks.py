"""Signed webhook delivery for async tasks (Standard Webhooks scheme), SSRF-guarded.

When an async task reaches a terminal state the caller POSTs its final envelope (JSON, carrying
the user's ``track_id``) to the user's ``webhook`` URL. This module provides the pieces; the
caller owns scheduling and persistence (outbox, dead letters): it validates the URL at submit
time with :func:`check_webhook_url`, and for each attempt signs with :func:`sign_headers`
(**the same message id on every attempt of one message**, a fresh timestamp each time), calls
:func:`deliver` once, and, while ``result.retryable and attempt < policy.max_attempts``,
sleeps :func:`next_delay` before the next attempt.

**Signing** follows https://www.standardwebhooks.com/ through the ``standardwebhooks`` library:
headers ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, with the secret
written ``whsec_<base64 key>``. Receivers check it with :func:`verify` (or any Standard
Webhooks library); the library refuses timestamps more than 5 minutes from its clock.

**Delivery** treats the URL as untrusted input, exactly like an image URL: only http/https, the
checks of :func:`ingress.inputs.check_url`, and a client from
:func:`ingress.inputs.guarded_async_client` that resolves once, refuses any non-public answer
(``FetchLimits.allow_loopback`` admits only loopback, for tests) and connects to the address it
validated. Redirects are never followed (a 3xx is a failed, non-retryable attempt: following one
would let the receiver re-point a signed POST anywhere), the whole attempt is capped at
``WebhookPolicy.timeout_seconds``, and at most ``max_response_bytes`` of the answer are read.

Outcome classes (:class:`DeliveryResult`): 2xx is ok; 408/409/425/429 and 5xx, timeouts and
connection/protocol errors are retryable; other 4xx, 3xx, a refused URL or address (SSRF) are
not. :func:`deliver` never raises for network problems.

Logging is quiet: one DEBUG record per attempt, naming only the URL's origin (scheme, host,
port; never the path or query, which may carry the user's tokens). Warning about a final
failure is the caller's job.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import math
import random
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from ssrfguard import SSRFGuardError
from standardwebhooks import Webhook

from ingress.contract.errors import InputFetchError
from ingress.inputs.fetch import REFUSED_ADDRESS, FetchLimits, check_destination, check_url, guarded_async_client

__all__ = [
    "DeliveryResult",
    "WebhookPolicy",
    "check_webhook_destination",
    "check_webhook_url",
    "deliver",
    "new_message_id",
    "new_secret",
    "next_delay",
    "sign_headers",
    "verify",
]

logger = logging.getLogger(__name__)

FIELD = "webhook"
_USER_AGENT = "studio-serve-webhooks/0.1"
#: 4xx answers that mean "try again later" rather than "this request is wrong".
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_CHUNK = 16 * 1024
_EXCERPT = 200
# Message ids go into a header and into the signed content: printable ASCII, no whitespace.
_MSG_ID = re.compile(r"^[!-~]{1,256}$")


# ---------------------------------------------------------------------------------------------
# Policy and backoff
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookPolicy:
    """How hard to try. Frozen, hashable and picklable.

    Attributes:
        max_attempts: Attempts per message, the first included.
        base_delay_seconds: Backoff ceiling before attempt 2 (see :func:`next_delay`).
        max_delay_seconds: Largest backoff ceiling.
        timeout_seconds: Total wall time of one attempt (connect, send, answer).
        max_response_bytes: Most bytes of a receiver's answer ever read.
    """

    max_attempts: int = 6
    base_delay_seconds: float = 2.0
    max_delay_seconds: float = 300.0
    timeout_seconds: float = 10.0
    max_response_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_seconds < 0 or self.max_delay_seconds < 0:
            raise ValueError("delays must not be negative")
        if self.max_delay_seconds < self.base_delay_seconds:
            raise ValueError("max_delay_seconds must be at least base_delay_seconds")
        if not self.timeout_seconds > 0:
            raise ValueError("timeout_seconds must be positive")
        if self.max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")


def next_delay(policy: WebhookPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

    Exponential backoff with full jitter: uniform in ``[0, min(max_delay, base * 2**(attempt-1))]``,
    so after attempt 1 up to ``base``, after attempt 2 up to ``2*base``, ... capped at
    ``max_delay_seconds``. ``rng`` defaults to the module's ``random``.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    # Cap the exponent before computing it: 2**10_000 as a float overflows.
    doublings = min(attempt - 1, 64)
    ceiling = min(policy.max_delay_seconds, policy.base_delay_seconds * math.ldexp(1.0, doublings))
    return (rng or random).uniform(0.0, ceiling)


# ---------------------------------------------------------------------------------------------
# Signing and verification
# ---------------------------------------------------------------------------------------------


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_message_id() -> str:
    """A fresh message id (``msg_`` + 128 random bits). Reuse it for every attempt."""
    return "msg_" + secrets.token_urlsafe(16)


def sign_headers(
    secret: str,
    msg_id: str,
    body: bytes,
    now: datetime | float | None = None,
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (UTF-8 JSON bytes).

    ``now`` is when the attempt is signed: an aware ``datetime`` or Unix seconds; default the
    current time. Sign each attempt afresh (receivers refuse timestamps older than 5 minutes)
    but keep ``msg_id`` the same across attempts of one message, so receivers can deduplicate.

    Raises:
        ValueError: On an empty/malformed ``msg_id``, a naive ``now``, a body that is not UTF-8,
            or a secret that is not ``whsec_<base64>``.
    """
    if not isinstance(msg_id, str) or not _MSG_ID.match(msg_id):
        raise ValueError("msg_id must be 1-256 printable ASCII characters without whitespace")
    if now is None:
        seconds = math.floor(time.time())
    elif isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        seconds = math.floor(now.timestamp())
    else:
        seconds = math.floor(float(now))
    # standardwebhooks stamps the datetime it is given as UTC (replace, not convert), so it
    # must already be UTC.
    stamp = datetime.fromtimestamp(seconds, tz=UTC)
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        signature = Webhook(secret).sign(msg_id, stamp, text)
    except Exception as exc:  # binascii.Error, EmptyWebhookSecretError, RuntimeError
        raise ValueError(f"invalid webhook secret ({type(exc).__name__})") from None
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": signature,
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes | str) -> Any:
    """Receiver side: check a delivery's signature and return its parsed JSON body.

    ``headers`` is any mapping of the request headers (names case-insensitive); ``body`` is the
    raw request body, exactly as received (do not re-serialise parsed JSON).

    Example (a FastAPI receiver)::

        from fastapi import FastAPI, HTTPException, Request
        from standardwebhooks import Webhook, WebhookVerificationError

        SECRET = "whsec_..."  # the secret you were given
        app = FastAPI()

        @app.post("/studio-hook")
        async def hook(request: Request):
            body = await request.body()
            try:
                envelope = Webhook(SECRET).verify(body, dict(request.headers))
            except WebhookVerificationError:
                raise HTTPException(status_code=401)
            # Deliveries are at-least-once: dedupe on request.headers["webhook-id"].
            handle(envelope["track_id"], envelope)
            return {"ok": True}

    which is what this function does::

        >>> secret = new_secret()
        >>> body = b'{"track_id": "t-1", "status": "success"}'
        >>> verify(secret, sign_headers(secret, "msg_1", body), body)["track_id"]
        't-1'

    Raises:
        standardwebhooks.WebhookVerificationError: If a header is missing, the
            timestamp is more than 5 minutes off, or no signature matches.
    """
    return Webhook(secret).verify(body, dict(headers))


# ---------------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome of one attempt. ``status`` is the HTTP status if an answer arrived."""

    ok: bool
    status: int | None
    error: str | None
    retryable: bool


def check_webhook_url(url: str, limits: FetchLimits) -> None:
    """Submit-time validation of a webhook URL, without network I/O.

    Raises:
        InputFetchError: naming the ``webhook`` field, if the URL is not http(s), malformed,
            or names a forbidden host (literal non-public address, encoded IPv4, localhost).
            Names are resolved and checked again at delivery time.
    """
    if not isinstance(url, str) or not url.strip():
        raise InputFetchError(FIELD, "must be a non-empty http(s) URL")
    check_url(url.strip(), FIELD, limits)


async def check_webhook_destination(url: str, limits: FetchLimits) -> None:
    """Submit-time validation of a webhook URL: :func:`check_webhook_url`, and its host
    resolved once with every address checked (no connection). Delivery checks again.

    Raises:
        InputFetchError: naming the ``webhook`` field.
    """
    check_webhook_url(url, limits)
    await check_destination(url.strip(), FIELD, limits)


async def deliver(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    policy: WebhookPolicy,
    limits: FetchLimits,
) -> DeliveryResult:
    """POST ``body`` to ``url`` once, with ``headers`` (from :func:`sign_headers`).

    Stateless; never raises for network problems or a refused URL (see the module docstring
    for what is retryable).
    """
    started = time.monotonic()
    origin = _origin(url)
    result = await _attempt(url, body, headers, policy, limits)
    logger.debug(
        "webhook attempt origin=%s ok=%s status=%s retryable=%s elapsed_ms=%d error=%s",
        origin,
        result.ok,
        result.status,
        result.retryable,
        (time.monotonic() - started) * 1000,
        result.error,
        extra={
            "webhook_origin": origin,
            "webhook_id": headers.get("webhook-id"),
            "webhook_ok": result.ok,
            "webhook_status": result.status,
            "webhook_retryable": result.retryable,
        },
    )
    return result


async def _attempt(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    policy: WebhookPolicy,
    limits: FetchLimits,
) -> DeliveryResult:
    try:
        check_webhook_url(url, limits)
    except InputFetchError as exc:
        return DeliveryResult(False, None, f"refused: {exc.message}", retryable=False)
    url = url.strip()
    request_headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    request_headers["Content-Type"] = "application/json"
    # We never follow redirects. Keep ssrfguard's own redirect cap above zero: at 0 it raises
    # on the 3xx response itself and we would lose the status code.
    client_limits = (
        limits if limits.max_redirects > 0 else dataclasses.replace(limits, max_redirects=1)
    )
    timeout = policy.timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            async with guarded_async_client(
                client_limits,
                timeout_seconds=timeout,
                headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"},
            ) as client:
                async with client.stream(
                    "POST", url, content=body, headers=request_headers
                ) as response:
                    status = response.status_code
                    excerpt = await _read_capped(response, policy.max_response_bytes)
    except TimeoutError:
        return DeliveryResult(False, None, f"timed out after {timeout:g} s", retryable=True)
    except SSRFGuardError:
        return DeliveryResult(False, None, f"refused: {REFUSED_ADDRESS}", retryable=False)
    except httpx.TimeoutException:
        return DeliveryResult(False, None, f"timed out after {timeout:g} s", retryable=True)
    except (httpx.HTTPError, httpx.StreamError, OSError) as exc:
        return DeliveryResult(
            False, None, f"{type(exc).__name__}: {_clip(str(exc))}", retryable=True
        )
    except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
        return DeliveryResult(
            False, None, f"refused: {type(exc).__name__}: {_clip(str(exc))}", retryable=False
        )

    if 200 <= status < 300:
        return DeliveryResult(True, status, None, retryable=False)
    if 300 <= status < 400:
        return DeliveryResult(
            False, status, f"HTTP {status}: redirects are not followed", retryable=False
        )
    retryable = status >= 500 or status in _RETRYABLE_4XX
    error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    return DeliveryResult(False, status, error, retryable=retryable)


async def _read_capped(response: httpx.Response, cap: int) -> str:
    """Read at most ``cap`` bytes of the answer; return a short printable excerpt."""
    buffer = bytearray()
    if cap > 0:
        async for chunk in response.aiter_raw(_CHUNK):
            buffer += chunk
            if len(buffer) >= cap:
                break  # leaving the stream unread closes the connection
    text = bytes(buffer[:_EXCERPT * 4]).decode("utf-8", errors="replace")
    return _clip(" ".join(text.split()), _EXCERPT)


def _origin(url: str) -> str:
    try:
        parsed = httpx.URL(url)
        port = f":{parsed.port}" if parsed.port is not None else ""
        return f"{parsed.scheme}://{parsed.host}{port}"
    except Exception:  # noqa: BLE001 - only for logging
        return "<invalid URL>"


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
