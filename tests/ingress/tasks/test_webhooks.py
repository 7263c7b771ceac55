"""Tests for ingress.tasks.webhooks: Standard Webhooks signing and SSRF-guarded delivery.

Receivers are real HTTP servers on 127.0.0.1 (threads, ephemeral ports) that verify every
request with the ``standardwebhooks`` library and record it. No test sends a packet to a
non-loopback address or a DNS server: autouse fixtures replace the resolver handed to the SSRF
guard (numeric literals and a small table only, no I/O) and wrap ``anyio.connect_tcp`` (where
the guard opens sockets) so any attempt to connect anywhere but loopback fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import pickle
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from ingress.contract.errors import InputFetchError
from ingress.inputs import FetchLimits
from ingress.inputs import fetch as inputs
from ingress.tasks.webhooks import (
    DeliveryResult,
    WebhookPolicy,
    check_webhook_url,
    deliver,
    new_message_id,
    new_secret,
    next_delay,
    sign_headers,
    verify,
)

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("connections")]

SECRET = new_secret()
LOOP = FetchLimits(allow_loopback=True)
FAST = WebhookPolicy(timeout_seconds=2.0, base_delay_seconds=0.01, max_delay_seconds=0.05)
BODY = json.dumps(
    {"status": "success", "track_id": "track-ü-42", "output": ["https://cdn.example/a.png"]},
    ensure_ascii=False,
).encode()


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------------------------
# Loopback receiver
# ---------------------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: C901 - a routing table
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        try:
            Webhook(self.server.secret).verify(body, dict(self.headers.items()), json_parse=False)
            verified = True
        except WebhookVerificationError:
            verified = False
        self.server.requests.append(
            {"path": self.path, "headers": dict(self.headers.items()), "body": body,
             "verified": verified}
        )
        path, _, query = self.path.partition("?")
        try:
            if not verified:
                self._answer(401, b"bad signature")
            elif path == "/ok":
                self._answer(204)
            elif path.startswith("/status/"):
                self._answer(int(path.rsplit("/", 1)[1]), b"receiver says no\r\n\tdetails")
            elif path == "/flaky":
                self.server.flaky_count += 1
                self._answer(503 if self.server.flaky_count < 3 else 200, b"{}")
            elif path == "/redirect":
                self._answer(302, Location=query.removeprefix("to="))
            elif path == "/slow":
                time.sleep(3)
                self._answer(200)
            elif path == "/huge":
                # Claims 10 MiB and dribbles it over ~10 s: only a capped read returns in time.
                self.send_response(500)
                self.send_header("Content-Length", str(10 * 1024 * 1024))
                self.end_headers()
                for _ in range(160):
                    self.wfile.write(b"x" * 65536)
                    self.wfile.flush()
                    time.sleep(0.06)
            else:
                self._answer(404, b"unknown")
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, secret: str = SECRET):
        self.secret = secret
        self.requests: list[dict] = []
        self.flaky_count = 0
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def handle_error(self, request, client_address):
        pass  # clients hanging up mid-answer is what some tests do on purpose

    def stop(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def receiver():
    srv = _Server()
    yield srv
    srv.stop()


@pytest.fixture
def other_receiver():
    srv = _Server()
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------
# No DNS, no non-loopback packets
# ---------------------------------------------------------------------------------------------


class FakeResolver:
    def __init__(self):
        self.table: dict[str, list[str]] = {"localhost": ["127.0.0.1"]}
        self.calls: list[str] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append(host)
        try:
            return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass
        answers = self.table.get(host)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, f"test resolver does not know {host!r}")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)) for addr in answers]



@pytest.fixture(autouse=True)
def resolver(monkeypatch) -> FakeResolver:
    fake = FakeResolver()
    monkeypatch.setattr(inputs, "_resolver", fake)
    return fake




def send(url: str, msg_id: str = "msg_test", policy: WebhookPolicy = FAST,
         limits: FetchLimits = LOOP, body: bytes = BODY) -> DeliveryResult:
    return run(deliver(url, body, sign_headers(SECRET, msg_id, body), policy, limits))


# ---------------------------------------------------------------------------------------------
# Signing
# ---------------------------------------------------------------------------------------------


def test_new_secret_format():
    a, b = new_secret(), new_secret()
    assert a != b
    assert a.startswith("whsec_")
    assert len(base64.b64decode(a.removeprefix("whsec_"), validate=True)) == 32
    assert new_message_id() != new_message_id()


def test_sign_headers_matches_standardwebhooks_and_the_spec():
    now = time.time()
    headers = sign_headers(SECRET, "msg_abc", BODY, now=now)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(int(now))
    # Independently of the library: v1,base64(HMAC-SHA256(key, "{id}.{ts}.{body}")).
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, b"msg_abc." + str(int(now)).encode() + b"." + BODY, hashlib.sha256).digest()
    ).decode()
    assert headers["webhook-signature"] == "v1," + expected
    # And the library (and our receiver-side helper) accept it.
    assert Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)
    assert verify(SECRET, {k.title(): v for k, v in headers.items()}, BODY) == json.loads(BODY)


def test_sign_headers_with_aware_datetime_in_other_timezone():
    import datetime as dt

    moment = dt.datetime.now(dt.timezone(dt.timedelta(hours=5)))
    headers = sign_headers(SECRET, "msg_tz", BODY, now=moment)
    assert headers["webhook-timestamp"] == str(int(moment.timestamp()))
    verify(SECRET, headers, BODY)
    with pytest.raises(ValueError):
        sign_headers(SECRET, "msg_tz", BODY, now=dt.datetime.now())  # naive


def test_verification_refuses_tampering_wrong_secret_and_stale_timestamps():
    headers = sign_headers(SECRET, "msg_1", BODY)
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers, BODY.replace(b"success", b"failed!"))
    with pytest.raises(WebhookVerificationError):
        verify(new_secret(), headers, BODY)
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, {**headers, "webhook-id": "msg_2"}, BODY)
    stale = sign_headers(SECRET, "msg_1", BODY, now=time.time() - 600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(SECRET, stale, BODY)


@pytest.mark.parametrize("msg_id", ["", "has space", "line\nbreak", "x" * 257])
def test_sign_headers_refuses_bad_message_ids(msg_id):
    with pytest.raises(ValueError):
        sign_headers(SECRET, msg_id, BODY)


def test_sign_headers_refuses_bad_secret():
    with pytest.raises(ValueError):
        sign_headers("whsec_", "msg_1", BODY)


# ---------------------------------------------------------------------------------------------
# Policy and backoff
# ---------------------------------------------------------------------------------------------


class _MaxRng:
    """Always picks the top of the range, exposing the backoff ceiling."""

    def uniform(self, low, high):
        return high


def test_policy_defaults_and_pickle():
    policy = WebhookPolicy()
    assert (policy.max_attempts, policy.base_delay_seconds, policy.max_delay_seconds) == (6, 2, 300)
    assert policy.timeout_seconds == 10
    assert policy.max_response_bytes == 64 * 1024
    assert pickle.loads(pickle.dumps(policy)) == policy
    result = DeliveryResult(False, 500, "HTTP 500", True)
    assert pickle.loads(pickle.dumps(result)) == result
    with pytest.raises(ValueError):
        WebhookPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        WebhookPolicy(base_delay_seconds=10, max_delay_seconds=5)


def test_next_delay_grows_and_is_capped():
    policy = WebhookPolicy()
    ceilings = [next_delay(policy, attempt, rng=_MaxRng()) for attempt in range(1, 12)]
    assert ceilings[:8] == [2, 4, 8, 16, 32, 64, 128, 256]
    assert ceilings[8:] == [300, 300, 300]
    assert next_delay(policy, 10_000, rng=_MaxRng()) == 300  # no overflow
    rng = random.Random(1234)
    for attempt in range(1, 15):
        samples = [next_delay(policy, attempt, rng=rng) for _ in range(200)]
        ceiling = min(300, 2 * 2 ** (attempt - 1))
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # full jitter spreads over the whole range
        assert min(samples) < ceiling * 0.2
    with pytest.raises(ValueError):
        next_delay(policy, 0)


# ---------------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------------


def test_delivery_arrives_signed_and_intact(receiver):
    result = send(receiver.url("/ok"), msg_id="msg_intact")
    assert result == DeliveryResult(True, 204, None, False)
    [request] = receiver.requests
    assert request["verified"] is True
    assert request["body"] == BODY
    assert json.loads(request["body"])["track_id"] == "track-ü-42"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["webhook-id"] == "msg_intact"


def test_retries_keep_the_message_id(receiver):
    # The caller's loop: same message id every attempt, fresh signature each time.
    msg_id = new_message_id()
    results = []
    for attempt in range(1, FAST.max_attempts + 1):
        result = send(receiver.url("/flaky"), msg_id=msg_id)
        results.append(result)
        if result.ok or not result.retryable:
            break
        time.sleep(next_delay(FAST, attempt))
    assert [r.status for r in results] == [503, 503, 200]
    assert results[0].retryable and not results[-1].retryable and results[-1].ok
    assert [r["headers"]["webhook-id"] for r in receiver.requests] == [msg_id] * 3
    assert all(r["verified"] and r["body"] == BODY for r in receiver.requests)


def test_tampered_body_fails_verification(receiver):
    headers = sign_headers(SECRET, "msg_tamper", BODY)
    tampered = BODY.replace(b"success", b"failure")
    result = run(deliver(receiver.url("/ok"), tampered, headers, FAST, LOOP))
    assert result.ok is False and result.status == 401 and result.retryable is False
    assert receiver.requests[0]["verified"] is False


@pytest.mark.parametrize(
    "status, retryable",
    [(500, True), (503, True), (429, True), (408, True), (409, True), (425, True),
     (404, False), (400, False), (410, False), (422, False)],
)
def test_status_classification(receiver, status, retryable):
    result = send(receiver.url(f"/status/{status}"))
    assert result.ok is False
    assert result.status == status
    assert result.retryable is retryable
    assert result.error.startswith(f"HTTP {status}")
    assert "receiver says no details" in result.error  # excerpt, whitespace collapsed
    assert len(receiver.requests) == 1


def test_redirect_is_not_followed(receiver, other_receiver, connections):
    for max_redirects in (3, 0):
        limits = FetchLimits(allow_loopback=True, max_redirects=max_redirects)
        result = send(receiver.url("/redirect?to=" + other_receiver.url("/ok")), limits=limits)
        assert result.ok is False
        assert result.status == 302
        assert result.retryable is False
        assert "redirect" in result.error
    assert other_receiver.requests == []
    assert set(connections) == {"127.0.0.1"} and len(connections) == 2


def test_slow_receiver_times_out(receiver):
    policy = WebhookPolicy(timeout_seconds=0.5)
    started = time.monotonic()
    result = send(receiver.url("/slow"), policy=policy)
    elapsed = time.monotonic() - started
    assert result.ok is False and result.status is None and result.retryable is True
    assert "timed out" in result.error
    assert 0.4 <= elapsed < 1.5


def test_response_read_is_capped(receiver):
    # A 10 MiB answer dribbled over ~10 s: we read max_response_bytes and hang up.
    policy = WebhookPolicy(timeout_seconds=3.0, max_response_bytes=64 * 1024)
    started = time.monotonic()
    result = send(receiver.url("/huge"), policy=policy)
    assert time.monotonic() - started < 1.5
    assert result.status == 500 and result.retryable is True
    assert len(result.error) < 400


def test_connection_refused_is_retryable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = send(f"http://127.0.0.1:{port}/ok")
    assert result.ok is False and result.status is None and result.retryable is True


def test_unresolvable_name_is_retryable(resolver, connections):
    result = send("http://nowhere.test/hook")
    assert result.retryable is True and result.status is None
    assert resolver.calls == ["nowhere.test"] and connections == []


def test_default_limits_refuse_loopback_without_sending(receiver, connections, resolver):
    for url in (receiver.url("/ok"), receiver.url("/ok", host="localhost"),
                f"http://[::ffff:127.0.0.1]:{receiver.port}/ok", f"http://2130706433:{receiver.port}/"):
        result = send(url, limits=FetchLimits())
        assert result.ok is False and result.status is None and result.retryable is False
        assert result.error.startswith("refused")
    assert receiver.requests == []
    assert connections == [] and resolver.calls == []


def test_name_resolving_to_forbidden_address_refused_at_connect(receiver, resolver, connections):
    # Passes the URL checks (a name), refused once resolved: not retryable, nothing sent.
    resolver.table["hook.test"] = ["127.0.0.1"]
    result = send(f"http://hook.test:{receiver.port}/ok", limits=FetchLimits())
    assert (result.ok, result.status, result.retryable) == (False, None, False)
    assert "refused" in result.error
    resolver.table["private.test"] = ["10.1.2.3"]
    result = send(f"http://private.test:{receiver.port}/ok", limits=LOOP)
    assert (result.ok, result.status, result.retryable) == (False, None, False)
    assert resolver.calls == ["hook.test", "private.test"]
    assert connections == [] and receiver.requests == []
    # The same name is fine once loopback is allowed (tests only).
    assert send(f"http://hook.test:{receiver.port}/ok", limits=LOOP).ok
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/",
     "ftp://example.com/hook", "http://[::ffff:10.0.0.1]/", "http://0x7f000001/", "not a url",
     "http://user:pw@example.com/hook", "", "gopher://127.0.0.1:70/"],
)
def test_check_webhook_url_refuses(url, resolver, connections):
    with pytest.raises(InputFetchError) as info:
        check_webhook_url(url, FetchLimits())
    assert info.value.field == "webhook"
    assert info.value.message.startswith("webhook: ")
    assert resolver.calls == [] and connections == []
    # deliver refuses the same URLs without raising or connecting.
    result = send(url, limits=FetchLimits())
    assert (result.ok, result.status, result.retryable) == (False, None, False)
    assert resolver.calls == [] and connections == []


def test_check_webhook_url_accepts_public_urls_without_io(resolver, connections):
    for url in ("https://example.com/hook?token=abc", "http://hooks.example.org:8080/x",
                "https://93.184.216.34/hook"):
        check_webhook_url(url, FetchLimits())
    assert resolver.calls == [] and connections == []
