"""One local Ray cluster for the end-to-end tests: serve_config.yaml's apps with
tiny models, the emulated GPU types, the local object store, real HTTP."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from tests.support.configs import e2e_config
from tests.support.fakes.elevenlabs import FakeElevenLabs
from tests.support.fakes.llm_vendors import FakeVendors
from tests.support.service import LocalService

KEY_A, KEY_B, KEY_C = "sk-test-tenant-a", "sk-test-tenant-b", "sk-test-tenant-c"
KEY_Q = "sk-test-tenant-q"  # tenant-q has tight quotas
QUOTA_TASKS, QUOTA_IMAGES_PER_MINUTE = 2, 3
KEY_R = "sk-test-tenant-r"  # tenant-r has tight request limits (tests/e2e/test_limits.py)
LIMITS_R = {"requests_per_minute": 8, "concurrent_requests": 2, "chat_tokens_per_minute": 4000, "body_idle_seconds": 3}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
WEBHOOK_SECRET_C = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()


@pytest.fixture(scope="session")
def vendors():
    """Local fakes of the LLM vendors' and Tavily's wire formats (the chat service's SDKs call them)."""
    with FakeVendors() as fake:
        yield fake


@pytest.fixture(scope="session")
def elevenlabs():
    """A local fake of ElevenLabs' text-to-speech endpoint."""
    with FakeElevenLabs() as fake:
        yield fake


@pytest.fixture(scope="session")
def service(tmp_path_factory, vendors, elevenlabs):
    tmp = tmp_path_factory.mktemp("e2e")
    svc = LocalService(
        tmp,
        e2e_config(tmp),
        keys={KEY_A: "tenant-a", KEY_B: "tenant-b", KEY_C: "tenant-c", KEY_Q: "tenant-q", KEY_R: "tenant-r"},
        env={
            "STUDIO_ALLOW_LOOPBACK_INPUTS": "true",
            "STUDIO_RETRY_AFTER_SECONDS": "3",
            "STUDIO_WEBHOOK_SECRETS": json.dumps({"tenant-a": WEBHOOK_SECRET, "tenant-c": WEBHOOK_SECRET_C}),
            "STUDIO_WEBHOOK_MAX_ATTEMPTS": "3",
            "STUDIO_WEBHOOK_BASE_DELAY_SECONDS": "0.2",
            "STUDIO_TENANT_QUOTAS": json.dumps({
                "tenant-q": {"max_tasks": QUOTA_TASKS, "images_per_minute": QUOTA_IMAGES_PER_MINUTE},
                "tenant-r": {k: v for k, v in LIMITS_R.items() if k != "body_idle_seconds"},
            }),
            "STUDIO_BODY_IDLE_SECONDS": str(LIMITS_R["body_idle_seconds"]),
            "STUDIO_DECODE_BUDGET_BYTES": str(512 * 1024 * 1024),  # the smallest default: a small ingress
            **vendors.env(),
            "STUDIO_ELEVENLABS_BASE_URL": elevenlabs.base_url,
            "STUDIO_ELEVENLABS_API_KEY": elevenlabs.api_key,
            "STUDIO_VENDOR_TIMEOUT_SECONDS": "10",
        },
    )
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def client(service):
    with httpx.Client(base_url=service.api, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=300) as c:
        yield c


class _Images(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def png(size, color=(200, 120, 40), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def image_server():
    """A real loopback HTTP server holding input images."""
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    _Images.files = {
        "/photo.png": png((320, 256)),
        "/huge.png": png((2000, 1000)),
        "/square.png": png((256, 256)),
        "/mask.png": buf.getvalue(),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
