"""Stand-ins for Ray Serve deployment handles in process tests: ``handle.method.remote(...)``,
a streaming response (``options(stream=True)``) that records ``cancel()``, and a unary response
that raises Serve's own errors (a full queue, a dead replica)."""

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


class Refused:
    """A unary response whose ``await`` raises ``error`` — as Serve's ``DeploymentResponse`` raises
    ``BackPressureError`` when the deployment's queue is full, ``DeploymentUnavailableError``, or
    ``ActorDiedError`` when the replica died; records ``cancel()``."""

    def __init__(self, error: BaseException):
        self.error, self.cancelled = error, False

    def __await__(self) -> Any:
        raise self.error
        yield  # pragma: no cover  (a generator: awaitable)

    def cancel(self) -> None:
        self.cancelled = True


class Handle:
    """A deployment handle with the named methods: ``Handle(mask=fn).mask.remote(image)``."""

    def __init__(self, **methods: Callable[..., Any]):
        for name, fn in methods.items():
            setattr(self, name, Method(fn))


def backpressure() -> BaseException:
    """Serve's own ``BackPressureError``, as a handle raises it when ``max_queued_requests`` is reached."""
    from ray.serve.exceptions import BackPressureError

    return BackPressureError(num_queued_requests=16, max_queued_requests=16)
