"""Async tasks survive the loss of any one process.

A cluster of its own on the real S3 store (SeaweedFS). Tasks are submitted in
batches while a worker replica, the ingress replica, the coordinator, or the
whole app (a redeploy) goes away; every task must end in SUCCESS, or in FAILURE
with a reason, before its deadline, and every output must download.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.conftest import KEY_A
from tests.support.configs import e2e_config
from tests.support.service import LocalService, replica_pids

pytestmark = pytest.mark.e2e

JOB = {"app_id": "ap-sd15-txt2img", "height": 512, "width": 512, "num_inference_steps": 30, "celery": True}
DEADLINE = 240


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, seaweed_s3):
    tmp = tmp_path_factory.mktemp("failures")
    env = {
        **seaweed_s3.service_env(seaweed_s3.storage_settings()),
        "STUDIO_TASK_LEASE_SECONDS": "6",
        "STUDIO_TASK_MAX_ATTEMPTS": "3",
    }
    svc = LocalService(tmp, e2e_config(tmp, studio_apps=False), keys={KEY_A: "tenant-a"}, env=env).start()
    yield svc
    svc.stop()


def _call(method, url, **kw):
    """Retry through the seconds in which a killed ingress or proxy is coming back."""
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.request(method, url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=30, **kw)
            if r.status_code not in (502, 503, 504) or time.monotonic() > deadline:
                return r
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def submit(cluster, n, **extra):
    ids = []
    for _ in range(n):
        r = _call("POST", f"{cluster.api}/getTextToImage", json={**JOB, **extra})
        assert r.status_code == 200 and r.json()["status"] == "PENDING", r.text
        ids.append(r.json()["task_id"])
    return ids


def status(cluster, task_id):
    return _call("GET", f"{cluster.api}/status/{task_id}").json()


def wait_started(cluster, task_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env = status(cluster, task_id)
        if env["status"] == "STARTED" and env["progress"] > 0:
            return env
        time.sleep(0.1)
    raise AssertionError(f"{task_id} never started: {env}")


def settle_all(cluster, ids):
    """Every task ends SUCCESS (outputs download) or FAILURE with a reason, none stays open."""
    deadline = time.monotonic() + DEADLINE
    final = {}
    while len(final) < len(ids) and time.monotonic() < deadline:
        for task_id in ids:
            if task_id not in final:
                env = status(cluster, task_id)
                if env["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
                    final[task_id] = env
        time.sleep(0.5)
    stuck = [t for t in ids if t not in final]
    assert not stuck, f"still open after {DEADLINE}s: {[status(cluster, t)['status'] for t in stuck]}"
    for env in final.values():
        if env["status"] == "SUCCESS":
            for url in env["output"]:
                assert httpx.get(url, timeout=30).status_code == 200
        else:
            assert env["status"] == "FAILURE" and env["error"] and env["error_data"], env
    return final


def history(cluster, seaweed_s3, task_id):
    bucket = cluster.extra_env["STUDIO_STORAGE_S3_BUCKET"]
    raw = seaweed_s3.client().get_object(Bucket=bucket, Key=f"tenants/tenant-a/tasks/{task_id}/record.json")
    return json.loads(raw["Body"].read())


def kill(pids):
    assert pids, "no such replica"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_worker_killed_mid_task(cluster, seaweed_s3):
    ids = submit(cluster, 4)
    victim = wait_started(cluster, ids[0])
    kill(replica_pids(cluster, "sd15-a10g"))
    final = settle_all(cluster, ids)
    assert all(env["status"] == "SUCCESS" for env in final.values()), final
    record = history(cluster, seaweed_s3, victim["task_id"])
    assert record["attempts"] - record["unclaimed"] == 2, record["history"]  # one run lost, one that finished
    assert any("lost" in (h["note"] or "") for h in record["history"]), record["history"]


def test_ingress_killed_right_after_submit(cluster):
    ids = submit(cluster, 4)
    kill(replica_pids(cluster, "ingress"))
    final = settle_all(cluster, ids)
    assert all(env["status"] == "SUCCESS" for env in final.values()), final


def test_ingress_killed_while_submits_are_in_flight(cluster, seaweed_s3):
    """Clients keep submitting (each logical submit retried with its own Idempotency-Key
    until it is answered) while the ingress is SIGKILLed: every call ends, nothing hangs,
    each logical submit makes exactly one task, and every task finishes."""
    keys = [f"drill-{uuid.uuid4().hex}" for _ in range(10)]
    answers: dict[str, list] = {k: [] for k in keys}
    began = time.time_ns()

    def submit_one(key):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = httpx.post(f"{cluster.api}/getTextToImage", json=JOB, timeout=30,
                               headers={"Authorization": f"Bearer {KEY_A}", "Idempotency-Key": key})
                answers[key].append(r.status_code)
                if r.status_code == 200:
                    return r.json()["task_id"]
            except httpx.TransportError as exc:
                answers[key].append(type(exc).__name__)
            time.sleep(0.2)
        raise AssertionError(f"{key} never answered: {answers[key]}")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(submit_one, key) for key in keys]
        deadline = time.monotonic() + 60
        while sum(bool(a) for a in answers.values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        kill(replica_pids(cluster, "ingress"))  # submits are in flight right now
        ids = [f.result(timeout=150) for f in futures]
    assert len(set(ids)) == len(keys)
    bucket = cluster.extra_env["STUDIO_STORAGE_S3_BUCKET"]
    listed = seaweed_s3.client().list_objects_v2(Bucket=bucket, Prefix="tenants/tenant-a/tasks/").get("Contents", [])
    made = {o["Key"].split("/")[3] for o in listed if o["Key"].endswith("record.json")
            and int(o["Key"].split("/")[3][:16], 16) >= began}
    assert made == set(ids), "a retried submit made a second task"
    final = settle_all(cluster, ids)
    assert all(env["status"] == "SUCCESS" for env in final.values()), final

    def left():  # the marker goes right after the terminal write: allow it that moment
        markers = seaweed_s3.client().list_objects_v2(Bucket=bucket, Prefix="queue/").get("Contents", [])
        return [o["Key"] for o in markers if int(o["Key"].removeprefix("queue/")[:16], 16) >= began]

    deadline = time.monotonic() + 30
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left(), f"queue markers outlived their tasks: {left()}"


def test_coordinator_killed_mid_run(cluster):
    ids = submit(cluster, 4)
    wait_started(cluster, ids[0])
    kill(replica_pids(cluster, "tasks"))
    final = settle_all(cluster, ids)
    assert all(env["status"] == "SUCCESS" for env in final.values()), final


def test_redeploy_mid_run(cluster):
    ids = submit(cluster, 4)
    wait_started(cluster, ids[0])
    os.kill(cluster.proc.pid, signal.SIGHUP)  # the launcher redeploys the app: every replica is replaced
    final = settle_all(cluster, ids)
    assert "REDEPLOYED" in "\n".join(cluster.log)
    assert all(env["status"] in ("SUCCESS", "FAILURE") for env in final.values())
    assert sum(env["status"] == "SUCCESS" for env in final.values()) >= 3, final


def test_task_that_keeps_killing_its_worker_is_quarantined(cluster, seaweed_s3):
    (task_id,) = submit(cluster, 1, inference_type="a100")
    for attempt in (1, 2, 3):  # max_attempts: each attempt's worker dies while running it
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            record = history(cluster, seaweed_s3, task_id)
            runs = record["attempts"] - record["unclaimed"]
            if runs == attempt and record["status"] == "STARTED" and record["progress"] > 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"attempt {attempt} never ran: {record}")
        kill(replica_pids(cluster, "sd15-a100"))
    final = settle_all(cluster, [task_id])[task_id]
    assert final["status"] == "FAILURE" and final["error"] == "WorkerLost", final
    assert "3 attempts" in final["error_data"]
    final_record = history(cluster, seaweed_s3, task_id)
    assert final_record["attempts"] - final_record["unclaimed"] == 3
