"""Request bodies: capped in bytes while streaming, nesting bounded, every failure a 4xx envelope."""

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from ingress.contract.body import MAX_DEPTH, BodyBudget, parse_json, read_json
from ingress.contract.envelopes import install_handlers
from ingress.contract.errors import ValidationFailed

CAP = 4096


@pytest.fixture
def client():
    api = FastAPI()
    install_handlers(api)
    seen = {}

    @api.post("/echo")
    async def echo(request: Request):
        body = await read_json(request, CAP)
        seen["bytes"] = len(json.dumps(body))
        return {"ok": True}

    with TestClient(api, raise_server_exceptions=False) as c:
        c.seen = seen
        yield c


def test_a_body_at_the_cap_is_read_and_one_byte_more_is_413(client):
    body = json.dumps({"prompt": "x" * (CAP - 14)}).encode()
    assert len(body) == CAP
    assert client.post("/echo", content=body).status_code == 200
    r = client.post("/echo", content=body + b" ")
    assert r.status_code == 413
    env = r.json()
    assert env["error"] == "PayloadTooLarge" and f"at most {CAP} bytes" in env["error_data"]


def test_a_chunked_body_is_refused_while_it_streams(client):
    sent = []

    def chunks():
        for _ in range(1000):  # 1 MB if it were all read
            sent.append(1)
            yield b"[" * 1024

    r = client.post("/echo", content=chunks())
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"


def test_deep_nesting_is_a_422_not_a_500(client):
    deep = b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    api = FastAPI()
    install_handlers(api)

    @api.post("/big")
    async def big(request: Request):
        return await read_json(request, len(deep) + 1)

    with TestClient(api, raise_server_exceptions=False) as c:
        r = c.post("/big", content=deep)
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    assert f"at most {MAX_DEPTH} levels" in r.json()["error_data"]


def test_nesting_at_the_limit_parses_and_one_more_level_does_not():
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(ValidationFailed):
        parse_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(ValidationFailed):
        parse_json(b'{"a": {"b": ' + b"{" * MAX_DEPTH + b"}" * MAX_DEPTH + b"}}")


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b'{"a": NaN', b"[1,]"])
def test_malformed_json_is_a_422(client, raw):
    r = client.post("/echo", content=raw)
    assert r.status_code == 422 and r.json()["error_data"] == "body: not valid JSON"


def test_empty_body_is_an_empty_object():
    assert parse_json(b"  ") == {}


def _app(**kw):
    api = FastAPI()
    install_handlers(api)

    @api.post("/read")
    async def read(request: Request):
        return await read_json(request, CAP, **kw)

    return api


def test_a_body_that_does_not_arrive_in_time_is_408():
    import asyncio

    from starlette.requests import Request as StarletteRequest

    from ingress.contract.errors import RequestTimeout

    parts = [b'{"a": ', b"1}"]

    async def receive():  # a client that sends half its body, then stalls
        if len(parts) == 2:
            return {"type": "http.request", "body": parts.pop(0), "more_body": True}
        await asyncio.sleep(5)
        return {"type": "http.request", "body": parts.pop(0), "more_body": False}

    request = StarletteRequest({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)
    with pytest.raises(RequestTimeout):
        asyncio.run(read_json(request, CAP, timeout_seconds=0.2))


def test_the_bytes_held_at_once_are_bounded_and_given_back():
    budget = BodyBudget(max_bytes=CAP, retry_after=7)
    with TestClient(_app(budget=budget), raise_server_exceptions=False) as c:
        assert c.post("/read", content=b'{"a": 1}').status_code == 200
        assert budget.held == 0  # given back after each request
        budget.held = CAP - 4  # other requests hold almost all of it
        r = c.post("/read", content=b'{"a": 12345}')
        assert r.status_code == 503 and r.headers["retry-after"] == "7" and r.json()["error"] == "Overloaded"
        assert budget.held == CAP - 4


def test_two_bodies_at_once_share_the_budget():
    """Two requests read at once: together they pass the budget, so the second to grow
    past it is refused (503) while the first completes, and nothing stays held."""
    import asyncio

    from starlette.requests import Request as StarletteRequest

    from ingress.contract.errors import Overloaded

    budget = BodyBudget(max_bytes=300, retry_after=1)

    def request(gate: asyncio.Event):
        parts = [b'{"a": "' + b"x" * 150, b'"}']

        async def receive():
            if len(parts) == 2:
                return {"type": "http.request", "body": parts.pop(0), "more_body": True}
            await gate.wait()
            return {"type": "http.request", "body": parts.pop(0), "more_body": False}

        return StarletteRequest({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)

    async def go():
        first_gate, second_gate = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(read_json(request(first_gate), CAP, budget=budget))
        await asyncio.sleep(0.05)  # the first holds 157 bytes and waits for the rest
        second = asyncio.create_task(read_json(request(second_gate), CAP, budget=budget))
        with pytest.raises(Overloaded):
            await second  # 157 more would pass 300
        first_gate.set()
        assert (await first)["a"] == "x" * 150
        assert budget.held == 0
    asyncio.run(go())
