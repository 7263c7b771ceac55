"""API keys: ``Authorization: Bearer <key>`` mapped to a tenant."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

from ingress.contract.errors import Unauthorized
from storage.keys import validate_tenant

log = logging.getLogger(__name__)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Holds SHA-256 digests of the configured keys, never the keys themselves.

    Tenant names follow the storage key rule (:func:`storage.keys.validate_tenant`);
    a name that breaks it fails here, at start-up, naming the rule.
    """

    def __init__(self, keys: dict[str, str] | None = None, digests: dict[str, str] | None = None):
        tenants = {_digest(k): tenant for k, tenant in (keys or {}).items() if k}
        for hexdigest, tenant in (digests or {}).items():
            try:
                tenants[bytes.fromhex(hexdigest)] = tenant
            except ValueError:
                raise ValueError(f"API key digests: {hexdigest[:8]}... is not a SHA-256 hex digest") from None
        for tenant in tenants.values():
            try:
                validate_tenant(tenant)
            except ValueError as exc:
                raise ValueError(f"API keys: {exc}") from None
        self._tenants = tenants

    @classmethod
    def load(
        cls, keys: dict[str, str], keys_file: Path | None, digests: dict[str, str] | None = None
    ) -> KeyRing:
        merged = dict(keys)
        if keys_file is not None:
            merged.update(json.loads(Path(keys_file).read_text()))
        ring = cls(merged, digests)
        if not ring:
            log.warning("no API keys configured: every request will be refused with 401")
        return ring

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
