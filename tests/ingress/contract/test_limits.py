"""Per-tenant limits on every route (TenantGate): requests in flight, bodies arriving, idle bodies,
requests per minute; checked before any body is read, by tenant, per replica."""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ingress.admission import Admission
from ingress.contract.auth import KeyRing, Tenant
from ingress.contract.body import read_json
from ingress.contract.envelopes import install_handlers
from ingress.contract.limits import TenantGate
from ingress.tasks.quotas import Refusal
from ingress.wiring.settings import IngressSettings

PREFIX = "/api/v1/studio"
KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}


def app(settings: IngressSettings, admission=None) -> tuple[FastAPI, TenantGate]:
    api = FastAPI()
    api.state.keys = KeyRing(KEYS)
    install_handlers(api)
    release = asyncio.Event()
    api.state.release = release

    @api.post(f"{PREFIX}/read")
    async def read(request: Request, tenant: Tenant):
        body = await read_json(request, 1 << 20)
        return {"tenant": tenant, "body": body}

    @api.get(f"{PREFIX}/hold")
    async def hold(tenant: Tenant):
        await release.wait()
        return {"tenant": tenant}

    @api.get(f"{PREFIX}/stream")
    async def stream(tenant: Tenant):
        async def lines():
            yield b"one\n"
            await release.wait()
            yield b"two\n"

        return StreamingResponse(lines())

    api.add_middleware(TenantGate, prefix=PREFIX, keys=api.state.keys, settings=settings, admission=admission)
    api.middleware_stack = api.build_middleware_stack()
    gate = _find_gate(api)
    return api, gate


def _find_gate(api: FastAPI) -> TenantGate:
    layer = api.middleware_stack
    while not isinstance(layer, TenantGate):
        layer = layer.app  # type: ignore[attr-defined]
    return layer


class Call:
    """One request driven by hand: its body arrives in ``parts`` (None: the client stalls; a number: it
    waits that many seconds before its next part)."""

    def __init__(self, api: FastAPI, method: str, path: str, key: str | None,
                 parts: list[bytes | float | None] | None = None):
        headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
        if parts is not None:
            size = sum(len(p) for p in parts if isinstance(p, bytes))
            headers.append((b"content-length", str(size).encode()))
        self.scope = {"type": "http", "method": method, "path": f"{PREFIX}{path}", "headers": headers,
                      "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("t", 80),
                      "root_path": ""}
        self.api, self.parts = api, list(parts or [])
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.started = asyncio.Event()

    async def receive(self):
        while self.parts and isinstance(self.parts[0], float):
            await asyncio.sleep(self.parts.pop(0))
        if not self.parts or self.parts[0] is None:
            await asyncio.sleep(3600)
        part = self.parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(self.parts)}

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            self.started.set()
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def __call__(self):
        await self.api(self.scope, self.receive, self.send)
        return self

    def json(self):
        return json.loads(self.body)


def run(coro):
    return asyncio.run(coro)


def test_requests_in_flight_are_capped_per_tenant_and_freed_when_they_end():
    async def go():
        api, gate = app(IngressSettings(tenant_concurrent_requests=2))
        held = [asyncio.create_task(Call(api, "GET", "/hold", "key-a")()) for _ in range(2)]
        await asyncio.sleep(0.05)
        third = await Call(api, "GET", "/hold", "key-a")()
        assert third.status == 429 and third.headers["retry-after"] == "1"
        assert third.json()["error"] == "QuotaExceeded" and "2 requests in flight" in third.json()["error_data"]
        other = asyncio.create_task(Call(api, "GET", "/hold", "key-b")())  # another tenant is not held up
        await asyncio.sleep(0.05)
        assert gate.in_flight == {"tenant-a": 2, "tenant-b": 1}
        api.state.release.set()
        assert [c.status for c in await asyncio.gather(*held, other)] == [200, 200, 200]
        assert gate.in_flight == {}
        assert (await Call(api, "GET", "/hold", "key-a")()).status == 200

    run(go())


def test_a_streamed_answer_holds_its_slot_until_its_last_line():
    async def go():
        api, gate = app(IngressSettings(tenant_concurrent_requests=1))
        streaming = asyncio.create_task(Call(api, "GET", "/stream", "key-a")())
        await asyncio.sleep(0.05)
        assert gate.in_flight == {"tenant-a": 1}  # the handler returned; its body is still being sent
        assert (await Call(api, "GET", "/hold", "key-a")()).status == 429
        api.state.release.set()
        done = await streaming
        assert done.body == b"one\ntwo\n" and gate.in_flight == {}

    run(go())


def test_bodies_arriving_at_once_are_capped_per_tenant():
    """One more body than the cap waits for a slot; when a body that trickles holds it past that wait, 429;
    one that stalls is cut (408) and frees its slot."""
    async def go():
        api, gate = app(IngressSettings(tenant_open_uploads=1, body_idle_seconds=0.3))
        trickle: list[bytes | float | None] = [b'{"a": "']
        for _ in range(5):
            trickle += [0.2, b"x"]
        first = asyncio.create_task(Call(api, "POST", "/read", "key-a", [*trickle, b'"}'])())
        await asyncio.sleep(0.05)
        assert gate.uploads == {"tenant-a": 1}
        second = await Call(api, "POST", "/read", "key-a", [b'{"b": 1}'])()
        assert second.status == 429 and "1 request bodies arriving at once" in second.json()["error_data"]
        assert (await Call(api, "POST", "/read", "key-b", [b'{"b": 1}'])()).status == 200  # tenant b: its own
        assert (await Call(api, "GET", "/hold-not-found", "key-a")()).status == 404  # no body: not an upload
        assert (await first).status == 200 and gate.uploads == {}
        stalled = asyncio.create_task(Call(api, "POST", "/read", "key-a", [b'{"a":', None])())
        await asyncio.sleep(0.05)
        waiting = await Call(api, "POST", "/read", "key-a", [b'{"c": 1}'])()  # gets the slot when the stalled one is cut
        assert (await stalled).status == 408 and waiting.status == 200
        assert gate.uploads == {} and gate.in_flight == {}

    run(go())


def test_a_burst_of_quick_bodies_past_the_cap_queues_instead_of_failing():
    async def go():
        api, gate = app(IngressSettings(tenant_open_uploads=2, tenant_concurrent_requests=16, body_idle_seconds=2))

        async def quick(i):
            call = Call(api, "POST", "/read", "key-a", [b'{"i": ', str(i).encode() + b"}"])
            real = call.receive

            async def receive():
                await asyncio.sleep(0.02)  # each chunk takes a moment: the bodies overlap
                return await real()

            call.receive = receive  # type: ignore[method-assign]
            return await call()

        done = await asyncio.gather(*(quick(i) for i in range(10)))
        assert [c.status for c in done] == [200] * 10 and [c.json()["body"]["i"] for c in done] == list(range(10))
        assert gate.uploads == {}

    run(go())


def test_a_body_that_stalls_is_cut_after_the_idle_timeout():
    async def go():
        api, gate = app(IngressSettings(body_idle_seconds=0.2))
        stalled = await asyncio.wait_for(Call(api, "POST", "/read", "key-a", [b'{"a": ', None])(), 5)
        assert stalled.status == 408 and stalled.json()["error"] == "RequestTimeout"
        assert "nothing arrived for 0.2 s" in stalled.json()["error_data"]
        assert gate.uploads == {} and gate.in_flight == {}
        ok = await Call(api, "POST", "/read", "key-a", [b'{"a": ', b"1}"])()
        assert ok.status == 200 and ok.json()["body"] == {"a": 1}

    run(go())


def test_without_a_valid_key_nothing_is_counted_and_the_route_answers_401():
    async def go():
        api, gate = app(IngressSettings(tenant_concurrent_requests=1))
        for key in (None, "wrong"):
            call = await Call(api, "POST", "/read", key, [b"{}"])()
            assert call.status == 401
        assert gate.in_flight == {} and gate.uploads == {}

    run(go())


class Coordinator:
    """Stands in for the coordinator's handle: admits ``allowed`` requests, then refuses as it would."""

    def __init__(self, allowed: int):
        self.calls: list[tuple] = []
        self.allowed = allowed
        self.admit = self

    def remote(self, *args):
        self.calls.append(args)

        async def answer():
            return None if len(self.calls) <= self.allowed else Refusal("requests_per_minute", 2, 30)

        return asyncio.ensure_future(answer())


def test_every_request_counts_against_the_tenants_requests_per_minute():
    async def go():
        coordinator = Coordinator(allowed=2)
        settings = IngressSettings(tenant_requests_per_minute=2)
        api, gate = app(settings, Admission(coordinator, settings))
        assert (await Call(api, "POST", "/read", "key-a", [b"{}"])()).status == 200
        assert (await Call(api, "GET", "/hold-missing", "key-a")()).status == 404  # any route counts
        refused = await Call(api, "POST", "/read", "key-a", [b"{}"])()
        assert refused.status == 429 and refused.headers["retry-after"] == "30"
        assert refused.json()["error_data"] == "quota: 2 requests per minute; retry in 30 s"
        assert coordinator.calls == [("tenant-a", {"requests": 1}, False)] * 3
        assert gate.in_flight == {}

    run(go())
