"""The load test's users and load shape. Run by ``python -m bench.load`` as
``locust -f bench/load/locustfile.py --headless ...`` in a subprocess (gevent stays there).

Reads ``LOAD_PROFILE`` (short|full) and ``LOAD_RAW_DIR`` from the environment; writes
into that directory ``requests.csv`` (one row per request: time, route, status,
Retry-After present, envelope error, failure), ``tasks.jsonl`` (every async task
submitted) and ``stages.jsonl`` (when each stage began).

Users: ``SyncUser`` (text-to-image, answered in the call), ``AsyncUser`` (``celery:
true`` submit, then status polls until the task ends) and ``AppsUser`` (``GET apps``).
Every request has a (connect, read) client timeout; a timeout is a failure named
``ClientTimeout``, a refused or reset connection one named ``ConnectionError``.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import time
from pathlib import Path

import gevent
from locust import HttpUser, LoadTestShape, between, events, task
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, Timeout

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.load.profiles import (  # noqa: E402
    CLIENT_TIMEOUT,
    DEPLOYMENTS,
    JOB,
    KEY,
    POLL_LIMIT_S,
    PROFILES,
    SYNC_APP,
    ZERO_APP,
)

API = "/api/v1/studio"
TERMINAL = {"SUCCESS", "FAILURE", "REVOKED"}
PROFILE = PROFILES[os.environ.get("LOAD_PROFILE", "short")]
RAW = Path(os.environ.get("LOAD_RAW_DIR", "."))
RAW.mkdir(parents=True, exist_ok=True)

_requests_file = (RAW / "requests.csv").open("w", newline="")
_requests = csv.writer(_requests_file)
_requests.writerow(["t", "route", "status", "retry_after", "error", "failure", "ms", "detail"])
_tasks_file = (RAW / "tasks.jsonl").open("a")
_stages_file = (RAW / "stages.jsonl").open("a")


@events.request.add_listener
def _record(request_type, name, response_time, response_length, response=None, exception=None, start_time=None, **_):
    """One row per request (the faults report counts 5xx and resets per window from these)."""
    status = getattr(response, "status_code", 0) or 0
    headers = getattr(response, "headers", None) or {}
    error = detail = ""
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = (body.get("error") or "") if isinstance(body, dict) else ""
        if not error:  # what answered instead of the envelope, for the report
            error, detail = "non-envelope", (response.text or "")[:120].replace("\n", " ")
    failure = str(exception).split(":")[0] if exception is not None else ""
    _requests.writerow([f"{start_time or time.time():.3f}", name, status, int("Retry-After" in headers), error,
                        failure, f"{response_time:.1f}", detail])
    _requests_file.flush()


@events.quitting.add_listener
def _close(**_):
    for f in (_requests_file, _tasks_file, _stages_file):
        f.close()


def judge(resp) -> dict | None:
    """Mark the response's outcome (failures get a stable name) and return its JSON body when it is a 200."""
    if resp.error is not None:
        if isinstance(resp.error, ConnectTimeout):
            resp.failure("ClientTimeout: connect")
        elif isinstance(resp.error, Timeout):
            resp.failure("ClientTimeout: read")
        elif isinstance(resp.error, RequestsConnectionError):
            resp.failure("ConnectionError: refused or reset")
        else:
            resp.failure(f"TransportError: {type(resp.error).__name__}")
        return None
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code == 200 and isinstance(body, dict) and not body.get("error"):
        resp.success()
        return body
    kind = body["error"] if isinstance(body, dict) and body.get("error") else "non-envelope"
    suffix = "" if resp.status_code != 503 or "Retry-After" in resp.headers else " without Retry-After"
    resp.failure(f"HTTP {resp.status_code} {kind}{suffix}")
    return None


class StudioUser(HttpUser):
    abstract = True

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {KEY}"

    def backoff(self, resp) -> None:
        """After a refused or reset connection wait a second (a client's back-off), so that a dead
        proxy is not hammered in a tight loop."""
        if isinstance(resp.error, RequestsConnectionError) and not isinstance(resp.error, ConnectTimeout):
            gevent.sleep(1)

    def post(self, name: str, body: dict):
        return self.client.post(f"{API}/getTextToImage", json=body, name=name, catch_response=True, timeout=CLIENT_TIMEOUT)

    def get(self, path: str, name: str):
        return self.client.get(f"{API}/{path}", name=name, catch_response=True, timeout=CLIENT_TIMEOUT)


class SyncUser(StudioUser):
    """Text-to-image answered in the call; honours Retry-After (up to 5 s) after a 503, as clients should."""

    weight = 5
    wait_time = between(0.1, 0.5)

    def generate(self, app_id: str, deployment: str) -> None:
        with self.post(f"POST getTextToImage sync {deployment}", {**JOB, "app_id": app_id,
                                                                  "seed": random.randrange(2**31)}) as resp:
            judge(resp)
            retry_after = resp.headers.get("Retry-After") if resp.status_code == 503 else None
        if retry_after and retry_after.isdigit():
            gevent.sleep(min(int(retry_after), 5))
        self.backoff(resp)

    @task(4)
    def sd15(self) -> None:
        self.generate(SYNC_APP, "sd15-a10g")

    @task(1)
    def sdxl(self) -> None:
        self.generate(ZERO_APP, "sdxl-a100")


class AsyncUser(StudioUser):
    """Submits an async task and polls its status every second until it ends (at most POLL_LIMIT_S)."""

    weight = 2
    wait_time = between(0.5, 1.5)

    @task
    def submit_and_poll(self) -> None:
        deployment, app_id = random.choice(list(DEPLOYMENTS.items()))
        with self.post("POST getTextToImage async", {**JOB, "app_id": app_id, "celery": True}) as resp:
            body = judge(resp)
        self.backoff(resp)
        if body is None or not body.get("task_id"):
            return
        _tasks_file.write(json.dumps({"task_id": body["task_id"], "deployment": deployment, "t": time.time()}) + "\n")
        _tasks_file.flush()
        deadline = time.monotonic() + POLL_LIMIT_S
        while time.monotonic() < deadline:
            gevent.sleep(1)
            with self.get(f"status/{body['task_id']}", "GET status/{task_id}") as resp:
                status = judge(resp)
            if status is not None and status.get("status") in TERMINAL:
                return


class AppsUser(StudioUser):
    weight = 1
    wait_time = between(1, 3)

    @task
    def apps(self) -> None:
        with self.get("apps", "GET apps") as resp:
            judge(resp)
        self.backoff(resp)


class StagedShape(LoadTestShape):
    """The profile's stages (warm-up, ramp, overload, cool-down), then stop."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None

    def tick(self):
        elapsed, start = self.get_run_time(), 0.0
        for stage in PROFILE.stages:
            if elapsed < start + stage.seconds:
                if stage.name != self.current:
                    self.current = stage.name
                    _stages_file.write(json.dumps({"stage": stage.name, "t": time.time(), "offset": elapsed}) + "\n")
                    _stages_file.flush()
                return stage.users, stage.spawn_rate
            start += stage.seconds
        return None
