"""The cluster side through the running service: scale-up on the async backlog,
per-tenant quotas (429 + Retry-After), and the Prometheus metrics after traffic."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.e2e.conftest import KEY_Q, QUOTA_IMAGES_PER_MINUTE
from tests.support.configs import SCALE_APP

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def deployment_view(service, name: str) -> dict:
    r = httpx.get(f"{service.api}/get-status", timeout=10)
    return r.json()["deployments"][name]


def wait_for(what, check, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def wait_terminal(client, task_ids, seconds=240):
    deadline = time.monotonic() + seconds
    pending = set(task_ids)
    while pending and time.monotonic() < deadline:
        for tid in list(pending):
            if client.get(f"/status/{tid}").json()["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                pending.discard(tid)
        time.sleep(0.5)
    assert not pending, f"{len(pending)} tasks never finished"


def test_queued_async_tasks_scale_the_family_up_then_down(service, client):
    """One job at a time per replica, and the coordinator dispatches only what the running
    replica holds: Serve sees one ongoing request. The backlog the coordinator publishes
    is what makes the autoscaler ask for the second replica."""
    assert deployment_view(service, "sd15-scale-a10g")["target"] == 1
    body = {"app_id": SCALE_APP, "prompt": "queue", "height": 512, "width": 512, "num_inference_steps": 30,
            "celery": True}
    ids = [client.post("/getTextToImage", json={**body, "seed": i}).json()["task_id"] for i in range(10)]
    wait_for("a second replica asked for", lambda: deployment_view(service, "sd15-scale-a10g")["target"] == 2, 60)
    wait_terminal(client, ids)
    wait_for("scale-down to the minimum", lambda: deployment_view(service, "sd15-scale-a10g")["target"] == 1, 90)


def test_quotas_answer_429_with_retry_after(service, image_server):
    with httpx.Client(base_url=service.api, headers={"Authorization": f"Bearer {KEY_Q}"}, timeout=120) as q:
        body = {"app_id": "ap-sd15-txt2img", "prompt": "q", "height": 256, "width": 256, "num_inference_steps": 1}
        # A batch larger than the per-minute quota can never fit: 422 naming the field.
        too_big = q.post("/getTextToImage", json={**body, "batch": QUOTA_IMAGES_PER_MINUTE + 1})
        assert too_big.status_code == 422 and too_big.json()["error_data"].startswith("batch:")
        assert q.post("/getTextToImage", json={**body, "batch": QUOTA_IMAGES_PER_MINUTE}).status_code == 200
        over = q.post("/getTextToImage", json=body)
        assert over.status_code == 429 and over.json()["error"] == "QuotaExceeded"
        assert 1 <= int(over.headers["Retry-After"]) <= 60
        # Another tenant is not affected.
        other = httpx.post(f"{service.api}/getTextToImage", json=body, timeout=120,
                           headers={"Authorization": "Bearer sk-test-tenant-b"})
        assert other.status_code == 200


def test_prometheus_metrics_after_traffic(service, client):
    ok = client.post("/getTextToImage", json={"app_id": "ap-sd15-txt2img", "prompt": "m", "height": 256,
                                               "width": 256, "num_inference_steps": 1})
    assert ok.status_code == 200
    # Valid for the schema, refused by the app's own limits (SDXL: 512..1536): a failure of that app.
    bad = client.post("/getTextToImage", json={"app_id": "ap-sdxl-txt2img", "prompt": "m", "height": 256})
    assert bad.status_code == 422
    task = client.post("/getTextToImage", json={"app_id": "ap-sd15-txt2img", "prompt": "m", "height": 256,
                                                 "width": 256, "num_inference_steps": 1, "celery": True}).json()
    wait_terminal(client, [task["task_id"]])
    wanted = {
        "ray_studio_requests_total": r'(?=.*app_id="ap-sd15-txt2img")(?=.*code="200")(?=.*endpoint="/getTextToImage")',
        "ray_studio_failures_total": r'(?=.*app_id="ap-sdxl-txt2img")(?=.*error="ValidationError")',
        "ray_studio_images_total": r'tenant="tenant-a"',
        "ray_studio_run_seconds_count": r'family="sd15"',
        "ray_studio_queue_wait_seconds_count": r'tenant="tenant-a"',
        "ray_studio_task_results_total": r'status="SUCCESS"',
        "ray_studio_queue_depth": r'family="sd15"',
    }

    def missing():
        text = httpx.get(service.metrics_url, timeout=10).text
        lines = text.splitlines()
        return [name for name, labels in wanted.items()
                if not any(line.startswith(name + "{") and re.search(labels, line) for line in lines)]

    left = wanted
    deadline = time.monotonic() + 60
    while left and time.monotonic() < deadline:
        left = missing()
        time.sleep(1)
    assert not left, f"not exported: {left}"
