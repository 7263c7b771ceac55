"""Object key rules and the tenant-scoped key layout."""

from __future__ import annotations

import re

MAX_KEY_LENGTH = 1024
_KEY_CHARS = re.compile(r"[A-Za-z0-9._/-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_EXT = re.compile(r"[a-z0-9]{1,10}")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise ``ValueError``.

    Allowed: ``[A-Za-z0-9._/-]``, no leading ``/``, no empty, ``.`` or ``..`` segments.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"object key longer than {MAX_KEY_LENGTH} characters")
    if not _KEY_CHARS.fullmatch(key):
        raise ValueError(f"object key has characters outside [A-Za-z0-9._/-]: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


#: The rule every tenant name follows (it is a key segment); said in error messages.
TENANT_RULE = "1..128 characters of [A-Za-z0-9_-], starting with a letter or digit"


def _segment(name: str, value: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise ValueError(f"invalid {name} {value!r}: want [A-Za-z0-9][A-Za-z0-9_-]{{0,127}}")
    return value


def validate_tenant(tenant: str) -> str:
    """Return ``tenant`` if it can name a tenant's key prefix, else raise ``ValueError``."""
    if not isinstance(tenant, str) or not _SEGMENT.fullmatch(tenant):
        raise ValueError(f"invalid tenant name {tenant!r}: want {TENANT_RULE}")
    return tenant


def output_key(
    tenant: str, request_id: str, index: int, ext: str = "png", attempt: int | None = None, kind: str = "images"
) -> str:
    """``tenants/<tenant>/<kind>/<request_id>/<index>.<ext>``; with ``attempt`` (async tasks)
    ``tenants/<tenant>/<kind>/<request_id>/<attempt>/<index>.<ext>``, so attempts never share keys.
    ``kind`` is the output kind's folder (``images``; ``audio``, ``text`` next)."""
    validate_tenant(tenant)
    _segment("kind", kind)
    _segment("request_id", request_id)
    for name, number in (("output index", index), ("attempt", attempt)):
        if number is not None and (isinstance(number, bool) or not isinstance(number, int) or number < 0):
            raise ValueError(f"invalid {name} {number!r}")
    if index is None:
        raise ValueError("invalid output index None")
    if not isinstance(ext, str) or not _EXT.fullmatch(ext):
        raise ValueError(f"invalid extension {ext!r}")
    folder = f"{request_id}/{attempt}" if attempt is not None else request_id
    return f"tenants/{tenant}/{kind}/{folder}/{index}.{ext}"


def tenant_of(key: str) -> str | None:
    """The tenant owning a ``tenants/<tenant>/...`` key; None for other or invalid keys."""
    try:
        validate_key(key)
    except ValueError:
        return None
    parts = key.split("/", 2)
    if len(parts) == 3 and parts[0] == "tenants" and _SEGMENT.fullmatch(parts[1]):
        return parts[1]
    return None
