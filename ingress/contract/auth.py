"""API keys: ``Authorization: Bearer <key>`` mapped to a tenant.

Routes take the caller's tenant as one dependency, :data:`Tenant`; it reads the
:class:`KeyRing` that :func:`ingress.contract.api.create_api` puts on
``app.state.keys``, and it runs before the handler reads the body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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


#: The security scheme the OpenAPI document publishes. It never refuses by itself
#: (``auto_error=False``): :func:`tenant_of_request` does, with the contract's 401 envelope.
bearer = HTTPBearer(
    auto_error=False, scheme_name="ApiKey", bearerFormat="API key",
    description="`Authorization: Bearer <api key>`; each key belongs to one tenant.",
)


async def tenant_of_request(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> str:
    """The caller's tenant, or raise ``Unauthorized`` (401) naming what is wrong with the header.
    (:class:`ingress.contract.limits.TenantGate` has usually read it already: its answer is reused.)"""
    known = getattr(request.state, "tenant", None)
    if known is not None:
        return known
    keys: KeyRing = request.app.state.keys
    return keys.tenant(request.headers.get("authorization"))


#: A route parameter annotated ``Tenant`` is the authenticated caller's tenant.
Tenant = Annotated[str, Depends(tenant_of_request)]
