"""The object store interface every backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class ObjectNotFound(KeyError):
    """No object under that key."""


@runtime_checkable
class ObjectStore(Protocol):
    """Blocking key/value object store; callers run it off the event loop."""

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key``, replacing what was there."""

    def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise ``ObjectNotFound`` if absent."""

    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""

    def url(self, key: str, expires_in: int) -> str:
        """A URL that downloads ``key`` for ``expires_in`` seconds, then stops working."""
