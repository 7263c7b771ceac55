"""Async tasks over real HTTP: submit, poll, progress, cancel, idempotency, webhooks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ingress.webhooks import verify
from tests.e2e.conftest import KEY_B, WEBHOOK_SECRET

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
    # sd15 on a100 runs one request and queues one: the third waits in the store.
    body = {**LONG, "inference_type": "a100"}
    ids = [client.post("/getTextToImage", json=body).json()["task_id"] for _ in range(3)]
    wait_for(client, ids[0], ("STARTED",))
    queued = ids[2]
    env = client.post("/cancelTask", json={"id": queued}).json()
    assert env["status"] == "REVOKED"
    for task_id in ids[:2]:
        client.post("/cancelTask", json={"id": task_id})
    for task_id in ids:
        assert wait_for(client, task_id, timeout=120)["status"] == "REVOKED"
    time.sleep(2)
    record = json.loads((service.workdir / "data/objects/data/tenants/tenant-a/tasks" / queued / "record.json").read_text())
    assert "STARTED" not in [h["status"] for h in record["history"]], record["history"]


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
    r = httpx.post(f"{service.api}/getTextToImage", headers={"Authorization": f"Bearer {KEY_B}"},
                   json={**QUICK, "webhook": "https://example.com/hook"})
    assert r.status_code == 422 and "secret" in r.json()["error_data"]


def test_bad_input_url_fails_the_task_with_a_reason(client):
    env = client.post("/getImageToImage", json={
        "app_id": "ap-sd15-img2img", "image": "http://127.0.0.1:1/none.png", "celery": True}).json()
    final = wait_for(client, env["task_id"])
    assert final["status"] == "FAILURE" and final["error"] == "InputFetchError" and final["error_data"]
