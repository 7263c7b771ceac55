"""Per-tenant limits on every authenticated route, before any body is read.

:class:`TenantGate` is a pure ASGI middleware (so a streamed answer holds its slot until its
last line): for a request with a valid key it

* refuses (429, ``Retry-After``) a tenant that already has ``concurrent_requests`` requests in
  flight on this replica;
* counts the request against the tenant's cluster-wide requests per minute (the coordinator's
  bucket, :class:`~ingress.admission.Admission`);
* wraps the body's ``receive``: a tenant may have ``open_uploads`` bodies arriving at once on this
  replica — one more waits for a slot (a burst of quick uploads just queues), for at most
  ``body_idle_seconds``, then is refused (429) — and a body that sends nothing for
  ``body_idle_seconds`` is cut (408), so a stalled body frees its slot by then at the latest.

Requests without a valid key pass through untouched: the route answers them 401 (``files`` and
``get-status`` need no key). The costs a route knows only once it has read its body — images,
chat tokens, document pages — are checked by the route, still before the expensive work.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from ingress.admission import Admission
from ingress.contract.auth import KeyRing
from ingress.contract.envelopes import error_response
from ingress.contract.errors import QuotaExceeded, RequestTimeout, StudioError, Unauthorized
from ingress.wiring.settings import IngressSettings, TenantLimits

#: ``Retry-After`` of a refusal for requests or uploads in flight: they end within seconds.
IN_FLIGHT_RETRY_AFTER = 1


class TenantGate:
    """The middleware (see the module docstring); ``in_flight`` and ``uploads`` count per tenant."""

    def __init__(self, app: Any, prefix: str, keys: KeyRing, settings: IngressSettings,
                 admission: Admission | None = None):
        self.app = app
        self.prefix = prefix
        self.keys = keys
        self.settings = settings
        self.admission = admission
        self.in_flight: Counter[str] = Counter()
        self.uploads: Counter[str] = Counter()
        self._upload_slots: dict[str, tuple[int, asyncio.Semaphore]] = {}

    def upload_slots(self, tenant: str, cap: int) -> asyncio.Semaphore:
        """The tenant's upload slots on this replica (made again if its cap changed)."""
        known = self._upload_slots.get(tenant)
        if known is None or known[0] != cap:
            known = self._upload_slots[tenant] = (cap, asyncio.Semaphore(cap))
        return known[1]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        authorization = headers.get(b"authorization")
        try:
            tenant = self.keys.tenant(authorization.decode("latin-1") if authorization else None)
        except Unauthorized:
            return await self.app(scope, receive, send)
        scope.setdefault("state", {})["tenant"] = tenant  # read by ingress.contract.auth
        limits = self.settings.quota(tenant)
        if limits.concurrent_requests and self.in_flight[tenant] >= limits.concurrent_requests:
            return await _refuse(scope, receive, send, QuotaExceeded(
                f"quota: {limits.concurrent_requests} requests in flight at once, your limit; retry when one "
                "has finished", IN_FLIGHT_RETRY_AFTER))
        self.in_flight[tenant] += 1
        upload = _Upload(self, tenant, limits, receive) if _has_body(headers) else None
        try:
            if self.admission is not None:
                try:
                    await self.admission.check(tenant, {"requests": 1})
                except StudioError as exc:
                    return await _refuse(scope, receive, send, exc)
            await self.app(scope, upload.receive if upload is not None else receive, send)
        finally:
            if upload is not None:
                upload.close()
            self.in_flight[tenant] -= 1
            if not self.in_flight[tenant]:
                del self.in_flight[tenant]


class _Upload:
    """One request's body as it arrives: counted among its tenant's open uploads until its last
    chunk, and cut when a chunk takes longer than ``body_idle_seconds``."""

    def __init__(self, gate: TenantGate, tenant: str, limits: TenantLimits, receive: Any):
        self.gate, self.tenant, self.limits, self._receive = gate, tenant, limits, receive
        self.open = False
        self.done = False
        self._slot: asyncio.Semaphore | None = None

    async def receive(self) -> dict[str, Any]:
        if self.done:
            return await self._receive()
        idle = self.gate.settings.body_idle_seconds
        if not self.open:
            cap = self.limits.open_uploads
            if cap:
                slots = self.gate.upload_slots(self.tenant, cap)
                try:
                    await asyncio.wait_for(slots.acquire(), idle)
                except TimeoutError:
                    self.done = True
                    raise QuotaExceeded(f"quota: {cap} request bodies arriving at once, your limit; retry when one "
                                        "has arrived", IN_FLIGHT_RETRY_AFTER) from None
                self._slot = slots
            self.gate.uploads[self.tenant] += 1
            self.open = True
        try:
            message = await asyncio.wait_for(self._receive(), idle)
        except TimeoutError:
            self.close()
            raise RequestTimeout(f"body: nothing arrived for {idle:g} s; allowed: at most {idle:g} s between chunks") \
                from None
        if message.get("type") != "http.request" or not message.get("more_body"):
            self.close()
        return message

    def close(self) -> None:
        self.done = True
        if self.open:
            self.open = False
            self.gate.uploads[self.tenant] -= 1
            if not self.gate.uploads[self.tenant]:
                del self.gate.uploads[self.tenant]
            if self._slot is not None:
                self._slot.release()
                self._slot = None


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length")
    return b"transfer-encoding" in headers or (length is not None and length.strip() not in (b"", b"0"))


async def _refuse(scope: dict[str, Any], receive: Any, send: Any, exc: StudioError) -> None:
    scope.setdefault("state", {})["studio_error_type"] = exc.error_type  # for the request metrics
    response = error_response(exc.error_type, exc.message, exc.status_code, exc.headers)
    await response(scope, receive, send)
