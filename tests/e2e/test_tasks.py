"""Async tasks over real HTTP: submit, poll, progress, cancel, idempotency, webhooks."""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ingress.tasks.webhooks import verify
from tests.e2e.conftest import KEY_B, KEY_C, WEBHOOK_SECRET
from tests.support.configs import DEADLINE_APP, DEADLINE_SECONDS
from tests.support.peers import silent_server

pytestmark = pytest.mark.e2e

QUICK = {"app_id": "ap-sd15-txt2img", "height": 256, "width": 256, "num_inference_steps": 2, "celery": True}
LONG = {"app_id": "ap-sd15-txt2img", "height": 1024, "width": 1024, "num_inference_steps": 50, "celery": True}


def wait_for(client, task_id, statuses=("SUCCESS", "FAILURE", "REVOKED"), timeout=180, check=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env = client.get(f"/status/{task_id}").json()
        if env["status"] in statuses and (check is None or check(env)):
            return env
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} still {env['status']} after {timeout}s: {env}")


def test_submit_returns_at_once_and_finishes(client):
    r = client.post("/getTextToImage", json={**QUICK, "reference_id": "order-17", "batch": 2, "seed": 5})
    assert r.status_code == 200
    env = r.json()
    assert env["status"] == "PENDING" and env["task_id"] and env["output"] is None
    done = wait_for(client, env["task_id"])
    assert done["status"] == "SUCCESS", done
    assert done["progress"] == 1.0 and done["time_required"] > 0
    assert done["meta"]["seeds"] == [5, 6] and len(done["output"]) == 2
    for url in done["output"]:
        assert httpx.get(url).status_code == 200
    by_post = client.post("/getImage", json={"id": env["task_id"]}).json()
    by_ref = client.post("/getImage", json={"refID": "order-17"}).json()
    assert by_post["task_id"] == by_ref["task_id"] == env["task_id"]
    assert by_ref["reference_id"] == "order-17"


def test_unknown_and_foreign_tasks_are_404(client, service):
    env = client.post("/getTextToImage", json=QUICK).json()
    assert client.get("/status/0123456789abcdef").status_code == 404
    assert client.post("/getImage", json={"refID": "nope"}).status_code == 404
    other = httpx.get(f"{service.api}/status/{env['task_id']}", headers={"Authorization": f"Bearer {KEY_B}"})
    assert other.status_code == 404 and other.json()["error"] == "NotFound"
    assert client.post("/getImage", json={}).status_code == 422


def test_progress_is_reported_while_running_and_cancel_stops_it(client):
    env = client.post("/getTextToImage", json=LONG).json()
    running = wait_for(client, env["task_id"], ("STARTED",), check=lambda e: e["progress"] > 0)
    assert 0 < running["progress"] < 1
    cancelled = client.post("/cancelTask", json={"id": env["task_id"]})
    assert cancelled.status_code == 200
    final = wait_for(client, env["task_id"], timeout=60)
    assert final["status"] == "REVOKED" and final["progress"] < 1 and final["output"] is None


def test_cancelled_queued_task_never_runs(client, service):
    # sd15 on a100 runs one request at a time: of three, one runs and the others wait.
    # Serve does not promise which of them runs first, so the test asks, not assumes.
    body = {**LONG, "inference_type": "a100"}
    ids = [client.post("/getTextToImage", json=body).json()["task_id"] for _ in range(3)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = {t: client.get(f"/status/{t}").json()["status"] for t in ids}
        if "STARTED" in states.values():
            break
        time.sleep(0.1)
    running = next(t for t, s in states.items() if s == "STARTED")
    queued = [t for t in ids if t != running]
    for task_id in queued:  # still PENDING: revoked at once, and never to run
        assert client.post("/cancelTask", json={"id": task_id}).json()["status"] == "REVOKED"
    client.post("/cancelTask", json={"id": running})
    for task_id in ids:
        assert wait_for(client, task_id, timeout=120)["status"] == "REVOKED"
    queue = service.workdir / "data/objects/data/queue"
    deadline = time.monotonic() + 30  # settled: no marker left, so nothing can dispatch it any more
    while any(m.name.split(".")[0] in ids for m in queue.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(m.name.split(".")[0] in ids for m in queue.iterdir())
    for task_id in queued:
        record = json.loads((service.workdir / "data/objects/data/tenants/tenant-a/tasks" / task_id / "record.json")
                            .read_text())
        assert "STARTED" not in [h["status"] for h in record["history"]], record["history"]


def test_concurrent_submits_with_one_idempotency_key_make_one_task(client):
    headers = {"Idempotency-Key": "idem-race"}
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: client.post("/getTextToImage", json=QUICK, headers=headers), range(6)))
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    ids = {r.json()["task_id"] for r in responses}
    assert len(ids) == 1
    assert wait_for(client, ids.pop())["status"] == "SUCCESS"


def test_other_tenants_cannot_cancel_or_find_a_task(client, service):
    env = client.post("/getTextToImage", json={**QUICK, "reference_id": "private-ref"}).json()
    other = {"Authorization": f"Bearer {KEY_B}"}
    r = httpx.post(f"{service.api}/cancelTask", headers=other, json={"id": env["task_id"]})
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    r = httpx.post(f"{service.api}/getImage", headers=other, json={"refID": "private-ref"})
    assert r.status_code == 404
    assert wait_for(client, env["task_id"])["status"] == "SUCCESS"  # untouched by the attempt


def test_a_task_past_its_deadline_fails_and_frees_its_worker(client):
    env = client.post("/getTextToImage", json={**LONG, "app_id": DEADLINE_APP}).json()
    submitted = time.monotonic()
    final = wait_for(client, env["task_id"], timeout=60)
    assert final["status"] == "FAILURE" and final["error"] == "Timeout", final
    assert f"{DEADLINE_SECONDS} s" in final["error_data"]
    assert time.monotonic() - submitted < DEADLINE_SECONDS + 10
    # Its worker stopped at the next step: the next task on the same deployment runs at once.
    after = client.post("/getTextToImage", json={**QUICK, "app_id": DEADLINE_APP}).json()
    assert wait_for(client, after["task_id"], timeout=60)["status"] == "SUCCESS"


def test_idempotency_keys_are_bounded(client):
    assert client.post("/getTextToImage", json=QUICK, headers={"Idempotency-Key": "k" * 255}).status_code == 200
    r = client.post("/getTextToImage", json=QUICK, headers={"Idempotency-Key": "k" * 256})
    assert r.status_code == 422 and "1..255" in r.json()["error_data"]


def test_idempotency_key(client):
    headers = {"Idempotency-Key": "idem-1"}
    first = client.post("/getTextToImage", json=QUICK, headers=headers).json()
    again = client.post("/getTextToImage", json=dict(reversed(list(QUICK.items()))), headers=headers).json()
    assert again["task_id"] == first["task_id"]
    other = client.post("/getTextToImage", json={**QUICK, "seed": 1}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["error_data"]


class _Receiver(BaseHTTPRequestHandler):
    calls: list = []
    status = 200

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append((dict(self.headers), body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    class Handler(_Receiver):
        calls = []
        status = 200

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Handler, f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()


def test_webhook_is_signed_and_carries_track_id(client, receiver):
    handler, url = receiver
    env = client.post("/getTextToImage", json={**QUICK, "webhook": url, "track_id": "trk-9"}).json()
    wait_for(client, env["task_id"])
    deadline = time.monotonic() + 30
    while not handler.calls and time.monotonic() < deadline:
        time.sleep(0.2)
    headers, body = handler.calls[0]
    payload = verify(WEBHOOK_SECRET, {k.lower(): v for k, v in headers.items()}, body)
    assert payload["task_id"] == env["task_id"] and payload["track_id"] == "trk-9"
    assert payload["status"] == "SUCCESS" and len(payload["output"]) == 1


def test_failing_webhook_is_retried_then_dead_lettered(client, receiver, service):
    handler, url = receiver
    handler.status = 500
    env = client.post("/getTextToImage", json={**QUICK, "webhook": url}).json()
    wait_for(client, env["task_id"])
    dead = service.workdir / f"data/objects/data/tenants/tenant-a/webhooks/dead/{env['task_id']}.json"
    deadline = time.monotonic() + 60
    while not dead.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert dead.exists()
    assert len(handler.calls) == 3  # STUDIO_WEBHOOK_MAX_ATTEMPTS
    assert len({h["webhook-id"] for h, _ in handler.calls}) == 1
    assert json.loads(dead.read_text())["envelope"]["task_id"] == env["task_id"]


def test_webhook_urls_pass_the_ssrf_guard(client, service):
    r = client.post("/getTextToImage", json={**QUICK, "webhook": "http://169.254.169.254/hook"})
    assert r.status_code == 422 and r.json()["error"] == "InputFetchError"
    r = client.post("/getTextToImage", json={**QUICK, "webhook": "https://no-such-host.invalid/hook"})
    assert r.status_code == 422 and re.fullmatch(r"webhook: could not reach the URL \(incident [0-9a-f]{12}\)",
                                                 r.json()["error_data"]), r.text
    r = httpx.post(f"{service.api}/getTextToImage", headers={"Authorization": f"Bearer {KEY_B}"},
                   json={**QUICK, "webhook": "https://example.com/hook"})
    assert r.status_code == 422 and "secret" in r.json()["error_data"]


def test_a_silent_webhook_receiver_holds_up_no_other_tenant(client, service, receiver):
    """Tenant a's receiver accepts connections and never answers; tenant c's tasks, on a
    deployment so small that most of them must wait in the store for a later scan, still
    finish promptly, and their webhooks arrive while a's deliveries hang."""
    handler, good_url = receiver
    with silent_server() as silent:
        slow = [client.post("/getTextToImage", json={**QUICK, "webhook": silent.url + "/"}).json()["task_id"]
                for _ in range(6)]
        for task_id in slow:
            wait_for(client, task_id)
        deadline = time.monotonic() + 20
        while len(silent.held) < 4 and time.monotonic() < deadline:  # a's deliveries are now hanging
            time.sleep(0.05)
        assert len(silent.held) >= 4
        tenant_c = httpx.Client(base_url=service.api, headers={"Authorization": f"Bearer {KEY_C}"}, timeout=60)
        began = time.monotonic()
        fast = [tenant_c.post("/getTextToImage", json={**QUICK, "inference_type": "a100", "webhook": good_url})
                .json()["task_id"] for _ in range(4)]
        for task_id in fast:
            assert wait_for(tenant_c, task_id, timeout=60)["status"] == "SUCCESS"
        while len(handler.calls) < 4 and time.monotonic() - began < 30:
            time.sleep(0.05)
        assert sorted(json.loads(body)["task_id"] for _, body in handler.calls) == sorted(fast)
        assert time.monotonic() - began < 20, "tenant c waited behind tenant a's receiver"
