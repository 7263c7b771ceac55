"""Reading a request body: capped in bytes while it streams, parsed with bounded nesting.

Every route reads its body through :func:`read_json`, before any parsing: a
``Content-Length`` over the route's cap is refused at once, a chunked body is
counted as it arrives and refused the moment it passes the cap (413); a body
that takes longer than ``timeout_seconds`` to arrive is a 408; and the bytes all
requests of a replica hold at once are bounded by a :class:`BodyBudget` (503 with
``Retry-After`` when it is spent). Parsing refuses JSON nested deeper than
``max_depth`` (422) — including nesting so deep that the parser itself gives up —
so no body reaches validation, storage or a log unbounded. Large bodies are
parsed off the event loop.

Ray Serve's HTTP proxy reads a body before the ingress sees it and keeps no
limit of its own: in front of a cluster, cap body sizes at the edge too (e.g.
the Kubernetes Ingress's ``proxy-body-size``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import Request

from ingress.contract.errors import Overloaded, PayloadTooLarge, RequestTimeout, ValidationFailed

#: Deepest JSON nesting accepted. The contract's bodies nest 3 levels (chat history turns).
MAX_DEPTH = 32
#: Bodies larger than this are parsed in a thread, not on the event loop.
_PARSE_INLINE_BYTES = 256 * 1024


class BodyBudget:
    """The body bytes one replica holds at once, across all requests (one event loop)."""

    def __init__(self, max_bytes: int, retry_after: int):
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        self.held = 0

    def take(self, n: int) -> None:
        if self.held + n > self.max_bytes:
            raise Overloaded("too many large requests at once; retry later", self.retry_after)
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


async def read_json(
    request: Request, max_bytes: int, *, max_depth: int = MAX_DEPTH, timeout_seconds: float = 60.0,
    budget: BodyBudget | None = None,
) -> Any:
    """The parsed JSON body (``{}`` for an empty body), or a 408/413/422/503 contract error."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(_too_large(max_bytes))
    raw = bytearray()
    try:
        async with asyncio.timeout(timeout_seconds):
            async for chunk in request.stream():
                if len(raw) + len(chunk) > max_bytes:
                    raise PayloadTooLarge(_too_large(max_bytes))
                if budget is not None:
                    budget.take(len(chunk))
                raw += chunk
        if len(raw) > _PARSE_INLINE_BYTES:
            return await asyncio.to_thread(parse_json, bytes(raw), max_depth)
        return parse_json(bytes(raw), max_depth)
    except TimeoutError:
        raise RequestTimeout(f"body: not received within {timeout_seconds:g} s") from None
    finally:
        if budget is not None:
            budget.give(len(raw))


def parse_json(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``raw`` as JSON nested at most ``max_depth`` levels."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValidationFailed(_too_deep(max_depth)) from None
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("body: not valid JSON") from None
    if _depth_exceeds(value, max_depth):
        raise ValidationFailed(_too_deep(max_depth))
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _too_large(max_bytes: int) -> str:
    return f"body: larger than this route accepts; allowed: at most {max_bytes} bytes"


def _too_deep(max_depth: int) -> str:
    return f"body: JSON nested too deeply; allowed: at most {max_depth} levels"
