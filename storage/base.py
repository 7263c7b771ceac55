"""The object store interface every backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class ObjectNotFound(KeyError):
    """No object under that key."""


class PreconditionFailed(Exception):
    """A conditional write lost: the object changed since it was read, or already exists."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: float  # Unix time


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

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The bytes under ``key`` and their ETag; raise ``ObjectNotFound`` if absent."""

    def put_if(
        self, key: str, data: bytes, content_type: str = "application/json", *,
        if_match: str | None = None, if_absent: bool = False,
    ) -> str:
        """Write only if the current ETag is ``if_match`` (or, with ``if_absent``, if
        nothing is there); return the new ETag or raise ``PreconditionFailed``."""

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder-like prefix ending in ``/``)."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    def content_type(self, key: str) -> str:
        """The content type ``key`` was stored with."""


def is_transient(exc: BaseException) -> bool:
    """Whether a store call failed for a reason that may pass on its own (the network, the
    server, throttling, contention), as opposed to a missing object or a refused write."""
    if isinstance(exc, (ObjectNotFound, PreconditionFailed)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    try:
        from storage.s3 import is_transient_s3
    except ImportError:  # pragma: no cover
        return False
    return is_transient_s3(exc)
