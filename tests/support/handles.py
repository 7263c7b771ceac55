"""Stand-ins for Ray Serve deployment handles in process tests: ``handle.method.remote(...)``
and a streaming response (``options(stream=True)``) that records ``cancel()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Method:
    """``handle.<method>``: ``remote(*args)`` calls ``fn`` (a coroutine function gives an awaitable)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class Stream:
    """A streaming response: yields ``events``, then raises ``error`` (if any); records ``cancel()``."""

    def __init__(self, events: Any, error: BaseException | None = None):
        self.events, self.error, self.cancelled = list(events), error, False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        if self.events:
            return self.events.pop(0)
        if self.error is not None:
            raise self.error
        raise StopAsyncIteration

    def cancel(self) -> None:
        self.cancelled = True
