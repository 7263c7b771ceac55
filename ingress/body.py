"""Reading a request body: capped in bytes while it streams, parsed with bounded nesting.

Every route reads its body through :func:`read_json`, before any parsing: a
``Content-Length`` over the route's cap is refused at once, a chunked body is
counted as it arrives and refused the moment it passes the cap (413). Parsing
refuses JSON nested deeper than ``max_depth`` (422) — including nesting so deep
that the parser itself gives up — so no body reaches validation, storage or a
log unbounded.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from ingress.errors import PayloadTooLarge, ValidationFailed

#: Deepest JSON nesting accepted. The contract's bodies nest 3 levels (chat history turns).
MAX_DEPTH = 32


async def read_json(request: Request, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed JSON body (``{}`` for an empty body), or a 413/422 contract error."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(_too_large(max_bytes))
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise PayloadTooLarge(_too_large(max_bytes))
    return parse_json(bytes(raw), max_depth)


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
