"""API keys: ``Authorization: Bearer <key>`` mapped to a tenant."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

from ingress.errors import Unauthorized

log = logging.getLogger(__name__)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Holds SHA-256 digests of the configured keys, never the keys themselves."""

    def __init__(self, keys: dict[str, str]):
        self._tenants = {_digest(k): tenant for k, tenant in keys.items() if k}
        for tenant in self._tenants.values():
            if not tenant or "/" in tenant or not tenant.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"tenant names must be [A-Za-z0-9_-]+, got {tenant!r}")

    @classmethod
    def load(cls, keys: dict[str, str], keys_file: Path | None) -> "KeyRing":
        merged = dict(keys)
        if keys_file is not None:
            merged.update(json.loads(Path(keys_file).read_text()))
        if not merged:
            log.warning("no API keys configured: every request will be refused with 401")
        return cls(merged)

    def __len__(self) -> int:
        return len(self._tenants)

    def tenant(self, authorization: str | None) -> str:
        """The tenant for an ``Authorization`` header value, or raise ``Unauthorized``."""
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <api key> header")
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("Authorization must be 'Bearer <api key>'")
        digest = _digest(key.strip())
        for known, tenant in self._tenants.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise Unauthorized("unknown API key")
