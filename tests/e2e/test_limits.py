"""Round-2 hardening over real HTTP on the shared cluster: decoded pixels on a budget (the ingress
replica's memory under a body of small PNGs that decode huge), every route under the tenant limits
(requests in flight, requests per minute, chat tokens, a body that stalls), and an incident id a
client receives found, once, in the running service's log files."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import KEY_B, KEY_R, LIMITS_R
from tests.support.service import replica_log_lines, replica_pids

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


def _big_png_uri(size=(6000, 6600)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (40, 120, 200)).save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _eight_image_chat() -> dict:
    """The body of the report: 8 data-URI PNGs of 6000x6600 px (~130 KB each), two turns of four."""
    uri = _big_png_uri()
    images = [{"url": uri, "details": "high"} for _ in range(4)]
    return {"llm": "OpenAI", "llm_model": "gpt-4o", "image_analyze": True, "max_tokens": 16, "history": [
        {"role": "user", "content": {"text": "what are these?", "image_data": images}},
        {"role": "assistant", "content": "pictures"},
        {"role": "user", "content": {"text": "and these?", "image_data": images}}]}


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRss:
    """The highest resident size of ``pid`` while the block runs (sampled every 5 ms)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self) -> PeakRss:
        self.before = _rss(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.after = _rss(self.pid)


@pytest.fixture(scope="module")
def tenant_b(service):
    with httpx.Client(base_url=service.api, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=300) as c:
        yield c


def test_eight_huge_images_in_one_chat_raise_the_ingress_by_at_most_300_mb(service, tenant_b, vendors):
    (ingress,) = replica_pids(service, "ingress")
    body = _eight_image_chat()
    assert len(json.dumps(body)) < 2 * MIB  # small on the wire
    warm = tenant_b.post("/chat", json={**body, "history": [{"role": "user", "content": "hello"}]})
    assert warm.status_code == 200
    with PeakRss(ingress) as rss:
        r = tenant_b.post("/chat", json=body)
    assert r.status_code == 200, r.text
    print(f"8-image chat body: ingress RSS {rss.before / MIB:.0f} MB before, peak {rss.peak / MIB:.0f} MB "
          f"(+{(rss.peak - rss.before) / MIB:.0f}), {rss.after / MIB:.0f} MB after (+{(rss.after - rss.before) / MIB:.0f})")
    sent = [req for req in vendors.requests("openai")][-1]
    assert json.dumps(sent.body).count("data:image/png;base64,") == 8  # every image reached the vendor
    assert rss.peak - rss.before <= 300 * MIB, (rss.before, rss.peak, rss.after)
    assert rss.after - rss.before <= 100 * MIB, (rss.before, rss.after)  # and the memory went back


def test_sixteen_such_bodies_at_once_each_get_a_result_or_a_503(service, tenant_b):
    (ingress,) = replica_pids(service, "ingress")
    body = json.dumps(_eight_image_chat())

    def one(_: int) -> httpx.Response:
        return httpx.post(f"{service.api}/chat", content=body, timeout=300,
                          headers={"Authorization": f"Bearer {KEY_B}", "Content-Type": "application/json"})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    codes = sorted(a.status_code for a in answers)
    print(f"16 such bodies at once: {codes.count(200)} x 200, {codes.count(503)} x 503")
    assert set(codes) <= {200, 503}, [(a.status_code, a.text[:200]) for a in answers if a.status_code not in (200, 503)]
    for a in answers:
        if a.status_code == 503:
            assert a.headers["retry-after"] and a.json()["error"] == "Overloaded"
    assert replica_pids(service, "ingress") == [ingress]  # the same replica, alive
    assert tenant_b.post("/chat", json={"llm": "OpenAI", "history": [{"role": "user", "content": "hi"}]}).status_code == 200


# -- every route under the tenant limits ---------------------------------------------------------


def _slow_body(service, path: str, key: str) -> socket.socket:
    """A request whose body stops half-way: headers and a first part sent, the rest never."""
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=30)
    head = (f"POST /api/v1/studio/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
    sock.sendall(head.encode() + b'{"llm": ')
    return sock


def _answer(sock: socket.socket, timeout: float) -> tuple[int, str]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + 10:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.decode(errors="replace")


def test_a_body_that_stalls_is_cut_after_the_idle_timeout(service):
    sock = _slow_body(service, "chat", KEY_R)
    started = time.monotonic()
    try:
        status, text = _answer(sock, 30)
    finally:
        sock.close()
    assert status == 408 and "RequestTimeout" in text and "nothing arrived for" in text
    assert time.monotonic() - started < LIMITS_R["body_idle_seconds"] + 10


def test_requests_in_flight_are_capped_per_tenant(service):
    held = [_slow_body(service, "streamChat", KEY_R) for _ in range(LIMITS_R["concurrent_requests"])]
    try:
        time.sleep(0.5)
        r = httpx.get(f"{service.api}/apps", headers={"Authorization": f"Bearer {KEY_R}"}, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "requests in flight" in r.json()["error_data"]
        other = httpx.get(f"{service.api}/apps", headers={"Authorization": f"Bearer {KEY_B}"}, timeout=30)
        assert other.status_code == 200  # another tenant is not held up
    finally:
        for sock in held:
            sock.close()


def test_chat_tokens_are_a_cost_a_request_past_the_minutes_budget_is_a_422(service):
    too_many = LIMITS_R["chat_tokens_per_minute"] + 1
    r = httpx.post(f"{service.api}/chat", headers={"Authorization": f"Bearer {KEY_R}"}, timeout=60,
                   json={"llm": "OpenAI", "max_tokens": too_many, "history": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 422 and r.json()["error_data"].startswith("max_tokens: ")
    assert "chat tokens per minute" in r.json()["error_data"]


def test_every_route_counts_against_the_requests_per_minute(service):
    """Any route (a chat, a status read, the registry) takes from the same bucket; past it: 429 with Retry-After."""
    headers = {"Authorization": f"Bearer {KEY_R}"}
    refused = None
    for i in range(LIMITS_R["requests_per_minute"] + 2):
        if i % 3 == 0:
            r = httpx.post(f"{service.api}/streamChat", headers=headers, timeout=60,
                           json={"llm": "OpenAI", "max_tokens": 8, "history": [{"role": "user", "content": "hi"}]})
        elif i % 3 == 1:
            r = httpx.post(f"{service.api}/pdfVectorStore", headers=headers, timeout=60, json={"url": "ftp://x"})
        else:
            r = httpx.get(f"{service.api}/apps", headers=headers, timeout=60)
        if r.status_code == 429:
            refused = r
            break
    assert refused is not None, "no refusal past the requests per minute"
    assert "requests per minute" in refused.json()["error_data"] and int(refused.headers["retry-after"]) >= 1


# -- incidents in the log ------------------------------------------------------------------------


def _ingress_lines(service, text: str) -> list[dict]:
    """The ingress replica's log lines holding ``text``, waiting up to 10 s for the first."""
    deadline = time.monotonic() + 10
    while True:
        lines = replica_log_lines(service, "ingress", text)
        if lines or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.2)


def test_a_refused_fetchs_incident_id_is_in_the_replica_log_once_with_its_cause(service, tenant_b):
    r = tenant_b.post("/getImageToImage", json={"app_id": "ap-sd15-img2img",
                                                "image": "http://169.254.169.254/latest/meta-data/x.png"})
    assert r.status_code == 422
    incident = re.search(r"incident ([0-9a-f]{12})", r.json()["error_data"]).group(1)
    lines = _ingress_lines(service, incident)
    assert len(lines) == 1, lines
    assert "169.254.169.254" in lines[0]["cause"] and lines[0]["levelname"] == "INFO"


def test_every_request_leaves_one_structured_line_in_the_ingress_log(service, tenant_b):
    r = tenant_b.post("/getTextToImage", json={"app_id": "ap-sd15-txt2img", "height": 256, "width": 256,
                                               "num_inference_steps": 2})
    assert r.status_code == 200
    task_id = r.json()["task_id"]
    (line,) = _ingress_lines(service, task_id)
    assert {k: line[k] for k in ("tenant", "app_id", "family_deployment", "studio_task_id", "outcome", "code")} == {
        "tenant": "tenant-b", "app_id": "ap-sd15-txt2img", "family_deployment": "sd15-a10g", "studio_task_id": task_id,
        "outcome": "OK", "code": 200}
    assert line["seconds"] > 0 and line["request_id"]  # Serve's own request id, on every line of the request
