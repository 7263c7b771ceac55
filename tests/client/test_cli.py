"""The ``studio`` CLI against a real local HTTP server speaking the studio wire format."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import client.api
from client.cli import main

KEY = "sk-test-secret-key"
PREFIX = "/api/v1/studio/"
PNG = b"\x89PNG\r\n\x1a\n" + b"fake-image-bytes-" * 8
PNG2 = b"\x89PNG\r\n\x1a\n" + b"second-image" * 5

APPS = [
    {"app_id": "ap-txt", "name": "Text To Image SD 1.5", "family": "sd15", "task": "text2img",
     "routes": ["getTextToImage"], "inference_types": ["a10g", "a100"], "default_inference_type": "a10g",
     "limits": {}, "defaults": {}},
    {"app_id": "ap-img", "name": "Image To Image", "family": "sd15", "task": "img2img",
     "routes": ["getImageToImage"], "inference_types": ["a100"], "default_inference_type": "a100",
     "limits": {}, "defaults": {}},
]


def envelope(**kw: Any) -> dict[str, Any]:
    env = dict.fromkeys(["time_required", "error", "error_data", "input", "output", "app_id", "task_id",
                         "status", "meta", "progress", "reference_id", "track_id"])
    env.update(kw)
    return env


class Fake:
    """State and behaviour of the fake studio; tests tweak the attributes."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.statuses: list[dict[str, Any]] = []  # answers of GET status/{id}, in order; the last repeats
        self.submit_busy = 0  # how many submits answer 503 first
        self.submit_error: tuple[int, dict[str, Any]] | None = None
        self.base = ""

    def calls(self, method: str, route: str) -> list[tuple[str, str, dict[str, str], Any]]:
        return [r for r in self.requests if r[0] == method and r[1] == route]

    def handle(self, method: str, route: str, headers: dict[str, str], body: Any):
        """(status, json-or-bytes, extra headers)."""
        if route.startswith("files/"):
            return 200, {"files/0.png": PNG, "files/1.png": PNG2}[route], {}
        if headers.get("authorization") != f"Bearer {KEY}":
            return 401, envelope(error="Unauthorized", error_data="missing or unknown API key", status="FAILURE"), {}
        if method == "GET" and route == "apps":
            return 200, {"apps": APPS}, {}
        if method == "POST" and route in ("getTextToImage", "getImageToImage"):
            if self.submit_busy:
                self.submit_busy -= 1
                return 503, envelope(error="Overloaded", error_data="queue full", status="FAILURE"), {"Retry-After": "3"}
            if self.submit_error:
                return self.submit_error[0], self.submit_error[1], {}
            if body.get("celery"):
                return 200, envelope(task_id="t1", status="PENDING", progress=0.0, app_id=body["app_id"]), {}
            if body.get("base64"):
                out = [f"data:image/png;base64,{base64.b64encode(PNG).decode()}"]
            else:
                out = [f"{self.base}{PREFIX}files/0.png", f"{self.base}{PREFIX}files/1.png"]
            return 200, envelope(task_id="s1", status="SUCCESS", output=out, app_id=body["app_id"]), {}
        if method == "GET" and route == "status/t1":
            answer = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return 200, answer, {}
        if method == "POST" and route == "cancelTask":
            self.statuses = [envelope(task_id=body["id"], status="REVOKED", error="Cancelled")]
            return 200, envelope(task_id=body["id"], status="STARTED", progress=0.3), {}
        return 404, envelope(error="NotFound", error_data=route, status="FAILURE"), {}


@pytest.fixture
def fake():
    state = Fake()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _serve(self, method: str):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            route = self.path.split("?")[0].removeprefix(PREFIX)
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.requests.append((method, route, headers, body))
            code, payload, extra = state.handle(method, route, headers, body)
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "image/png" if isinstance(payload, bytes) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


class Sleeps(list):
    """The waits the client asked for; ``hook(seconds)`` runs on each (e.g. to raise)."""

    hook = None

    def sleep(self, seconds: float) -> None:
        self.append(seconds)
        if self.hook is not None:
            self.hook(seconds)


@pytest.fixture
def sleeps(monkeypatch):
    """Record waits instead of sleeping; a test may set ``hook`` to act on a wait."""
    record = Sleeps()
    monkeypatch.setattr(client.api, "sleep", record.sleep)
    return record


def run(fake: Fake, *argv: str) -> int:
    return main(["--url", fake.base, "--key", KEY, "--timeout", "5", *argv])


def test_apps_table(fake, capsys):
    assert run(fake, "apps") == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].split() == ["APP_ID", "NAME", "TASK", "GPU_TYPES"]
    assert lines[1].startswith("ap-txt") and lines[1].endswith("a10g*,a100") and "text2img" in lines[1]
    assert lines[2].startswith("ap-img") and lines[2].endswith("a100*")
    assert KEY not in out + err
    assert fake.requests[0][2]["authorization"] == f"Bearer {KEY}"


def test_apps_json_and_env_defaults(fake, capsys, monkeypatch):
    monkeypatch.setenv("STUDIO_URL", fake.base)
    monkeypatch.setenv("STUDIO_API_KEY", KEY)
    assert main(["apps", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"apps": APPS}


def test_unauthorized_is_exit_2(fake, capsys):
    assert main(["--url", fake.base, "--key", "wrong", "apps"]) == 2
    err = capsys.readouterr().err
    assert "Unauthorized" in err and "wrong" not in err


def test_sync_generate_downloads_every_output(fake, tmp_path, capsys, sleeps):
    out_dir = tmp_path / "out"
    code = run(fake, "generate", "--app", "ap-txt", "--prompt", "a lighthouse", "--steps", "4", "--width", "512",
               "--guidance", "6.5", "--seed", "42", "--option", "scheduler=DDIMScheduler", "--option", "tomesd=false",
               "--option", 'extra={"a": [1, 2]}', "--sync", "--out", str(out_dir))
    assert code == 0
    body = fake.calls("POST", "getTextToImage")[0][3]
    assert body == {"app_id": "ap-txt", "prompt": "a lighthouse", "num_inference_steps": 4, "width": 512,
                    "guidance_scale": 6.5, "seed": 42, "scheduler": "DDIMScheduler", "tomesd": False,
                    "extra": {"a": [1, 2]}}
    paths = capsys.readouterr().out.split()
    assert paths == [str(out_dir / "s1-0.png"), str(out_dir / "s1-1.png")]
    assert Path(paths[0]).read_bytes() == PNG and Path(paths[1]).read_bytes() == PNG2
    # the key goes to the API, never to a download URL
    downloads = [r for r in fake.requests if r[1].startswith("files/")]
    assert len(downloads) == 2 and all("authorization" not in r[2] for r in downloads)


def test_base64_output_is_decoded(fake, tmp_path, capsys):
    assert run(fake, "generate", "--app", "ap-txt", "--sync", "--option", "base64=true", "--out", str(tmp_path)) == 0
    assert fake.calls("POST", "getTextToImage")[0][3]["base64"] is True
    assert (tmp_path / "s1-0.png").read_bytes() == PNG
    assert capsys.readouterr().out.split() == [str(tmp_path / "s1-0.png")]


def test_async_polls_with_progress_then_downloads(fake, tmp_path, capsys, sleeps):
    url = f"{fake.base}{PREFIX}files/0.png"
    fake.statuses = [
        envelope(task_id="t1", status="PENDING", progress=0.0),
        envelope(task_id="t1", status="STARTED", progress=0.5),
        envelope(task_id="t1", status="SUCCESS", progress=1.0, output=[url]),
    ]
    assert run(fake, "generate", "--app", "ap-txt", "--prompt", "x", "--out", str(tmp_path)) == 0
    submit = fake.calls("POST", "getTextToImage")[0]
    assert submit[3]["celery"] is True and submit[2].get("idempotency-key")
    assert len(fake.calls("GET", "status/t1")) == 3
    assert sleeps == [0.5, 0.75, 1.125]  # backoff 0.5 s growing to at most 2 s
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / "t1-0.png")]
    assert (tmp_path / "t1-0.png").read_bytes() == PNG
    assert "50% STARTED" in err and "100% SUCCESS" in err


def test_async_failure_reports_error_and_exits_1(fake, tmp_path, capsys, sleeps):
    fake.statuses = [envelope(task_id="t1", status="FAILURE", error="ModelError", error_data="boom (incident 7)")]
    assert run(fake, "generate", "--app", "ap-txt", "--out", str(tmp_path)) == 1
    out, err = capsys.readouterr()
    assert out == "" and "error: ModelError: boom (incident 7)" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_async_validation_failure_exits_2(fake, tmp_path, capsys, sleeps):
    fake.statuses = [envelope(task_id="t1", status="FAILURE", error="ValidationError", error_data="clip_skip: ...")]
    assert run(fake, "generate", "--app", "ap-txt", "--out", str(tmp_path)) == 2


def test_422_envelope_exits_2(fake, capsys):
    fake.submit_error = (422, envelope(error="ValidationError", status="FAILURE",
                                       error_data="height: (got 1600); allowed: 256..1536, multiple of 64"))
    assert run(fake, "generate", "--app", "ap-txt", "--height", "1600", "--sync") == 2
    err = capsys.readouterr().err
    assert "error: ValidationError: height: (got 1600); allowed: 256..1536, multiple of 64" in err


def test_500_envelope_exits_1(fake, capsys):
    fake.submit_error = (500, envelope(error="InternalError", error_data="incident abc", status="FAILURE"))
    assert run(fake, "generate", "--app", "ap-txt", "--sync") == 1
    assert "error: InternalError: incident abc" in capsys.readouterr().err


def test_503_retry_after_then_success(fake, tmp_path, capsys, sleeps):
    fake.submit_busy = 2
    assert run(fake, "generate", "--app", "ap-txt", "--sync", "--out", str(tmp_path)) == 0
    assert len(fake.calls("POST", "getTextToImage")) == 3
    assert sleeps == [3.0, 3.0]
    assert (tmp_path / "s1-0.png").read_bytes() == PNG
    assert "Overloaded (HTTP 503): retrying in 3.0s" in capsys.readouterr().err


def test_503_retries_are_bounded(fake, capsys, sleeps):
    fake.submit_busy = 100
    assert run(fake, "generate", "--app", "ap-txt", "--sync") == 1
    assert len(fake.calls("POST", "getTextToImage")) == 6  # 1 + 5 retries
    assert "error: Overloaded: queue full" in capsys.readouterr().err


def test_ctrl_c_while_polling_cancels_the_task(fake, tmp_path, capsys, sleeps):
    fake.statuses = [envelope(task_id="t1", status="STARTED", progress=0.2)]
    interrupted = []

    def hook(seconds):
        if not interrupted and fake.calls("GET", "status/t1"):
            interrupted.append(seconds)
            raise KeyboardInterrupt

    sleeps.hook = hook
    assert run(fake, "generate", "--app", "ap-txt", "--out", str(tmp_path / "out")) == 130
    cancels = fake.calls("POST", "cancelTask")
    assert [c[3] for c in cancels] == [{"id": "t1"}]
    assert "task t1: REVOKED" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_image_and_mask_files_are_sent_inline(fake, tmp_path, capsys):
    img = tmp_path / "in.png"
    img.write_bytes(PNG)
    mask_url = "https://example.com/mask.png"
    assert run(fake, "generate", "--app", "ap-img", "--image", str(img), "--mask", mask_url, "--strength", "0.6",
               "--sync", "--out", str(tmp_path / "o")) == 0
    assert not fake.calls("POST", "getTextToImage")
    body = fake.calls("POST", "getImageToImage")[0][3]
    assert body["image"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert body["mask_url"] == mask_url and body["strength"] == 0.6


def test_oversized_image_is_refused_locally(fake, tmp_path, capsys):
    big = tmp_path / "big.png"
    with big.open("wb") as fh:
        fh.truncate(20 * 1024 * 1024 + 1)
    assert run(fake, "generate", "--app", "ap-img", "--image", str(big), "--sync") == 2
    assert "20 MiB" in capsys.readouterr().err
    assert fake.requests == []


def test_unknown_app_and_bad_option_are_usage_errors(fake, capsys):
    assert run(fake, "generate", "--app", "ap-nope", "--sync") == 2
    assert "known apps: ap-img, ap-txt" in capsys.readouterr().err
    assert run(fake, "generate", "--app", "ap-txt", "--option", "novalue") == 2
    assert run(fake, "generate", "--app", "ap-txt", "--option", "celery=true") == 2
    assert not fake.calls("POST", "getTextToImage")
    assert run(fake, "generate") == 2  # argparse: --app is required


def test_unreachable_server_exits_1(capsys):
    assert main(["--url", "http://127.0.0.1:9", "--key", KEY, "apps"]) == 1
    err = capsys.readouterr().err
    assert "could not connect" in err and KEY not in err
