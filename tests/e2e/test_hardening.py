"""The spine's edges over real HTTP: bounded bodies and sizes, async submits checked like
sync ones, no internals in messages, webhook URLs redacted, the file route's edges, each
replica holding only its own secrets, and nothing listening beyond loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import io
import ipaddress
import json
import os
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import KEY_A, KEY_B, WEBHOOK_SECRET, _Images, png
from tests.e2e.test_tasks import wait_for
from tests.support.service import session_members

pytestmark = pytest.mark.e2e

QUICK = {"app_id": "ap-sd15-txt2img", "height": 256, "width": 256, "num_inference_steps": 2}


def data_uri(size) -> str:
    return "data:image/png;base64," + base64.b64encode(png(size)).decode()


# -- bodies ------------------------------------------------------------------------


def test_an_oversized_body_is_413_before_it_is_parsed(client):
    prompt_route = client.post("/getTextToImage", content=b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}',
                               headers={"Content-Type": "application/json"})
    assert prompt_route.status_code == 413
    assert prompt_route.json()["error"] == "PayloadTooLarge" and "1048576 bytes" in prompt_route.json()["error_data"]

    def chunked():  # no Content-Length: refused while it streams
        for _ in range(80):
            yield b" " * (1024 * 1024)

    r = client.post("/getImageToImage", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    # A route that takes images takes an inline image well past the small cap.
    big = Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3))  # noise: PNG cannot shrink it
    buf = io.BytesIO()
    big.save(buf, "PNG")
    assert len(buf.getvalue()) > 1024 * 1024
    ok = client.post("/getImageToImage", json={"app_id": "ap-sd15-img2img", "image": base64.b64encode(
        buf.getvalue()).decode(), "num_inference_steps": 2, "strength": 0.5})
    assert ok.status_code == 200, ok.text


def test_deeply_nested_json_is_a_422_envelope(client):
    deep = b'{"app_id": "ap-sd15-txt2img", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = client.post("/getTextToImage", content=deep, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    assert "nested" in r.json()["error_data"]


# -- image sizes, and async submits that check what sync checks -----------------------


@pytest.mark.parametrize("celery", [False, True])
def test_a_size_derived_from_one_side_is_bounded(client, celery):
    r = client.post("/getImageToImage", json={"app_id": "ap-sd15-img2img", "image": data_uri((6000, 100)),
                                             "height": 1536, "celery": celery})
    assert r.status_code == 422, r.text
    assert r.json()["error_data"].startswith("width:") and "allowed: 256..1536" in r.json()["error_data"]


@pytest.mark.parametrize("image", [
    "http://169.254.169.254/latest/meta-data/", "data:image/png;base64,not-base64!", "http://127.0.0.1:1/none.png",
    "data:image/png;base64," + base64.b64encode(b"GIF89a" + b"\0" * 64).decode(),
])
def test_async_submits_refuse_what_sync_refuses(client, image):
    body = {"app_id": "ap-sd15-img2img", "image": image, "num_inference_steps": 2}
    sync = client.post("/getImageToImage", json=body)
    submit = client.post("/getImageToImage", json={**body, "celery": True})
    assert sync.status_code == submit.status_code == 422, (sync.text, submit.text)
    assert sync.json()["error"] == submit.json()["error"] == "InputFetchError"
    assert "127.0.0.1" not in submit.json()["error_data"].replace(image, "")  # no addresses beyond the client's own
    assert "Errno" not in submit.json()["error_data"] and "Error:" not in submit.json()["error_data"]


@pytest.mark.parametrize("route, body, field", [
    ("getTextToImage", {**QUICK, "clip_skip": 5}, "clip_skip"),  # the tiny text encoder has 4 layers
    ("getTextToImage", {**QUICK, "scheduler": "DDIMScheduler", "use_karras_sigmas": True}, "use_karras_sigmas"),
    ("getTextToImage", {**QUICK, "scheduler": "IPNDMScheduler"}, "scheduler"),
    ("getImageToImage", {"app_id": "ap-sd15-img2img", "image": data_uri((256, 256)), "strength": 0,
                         "num_inference_steps": 2}, "strength"),
])
def test_async_submits_refuse_what_the_model_would(client, route, body, field):
    sync = client.post(f"/{route}", json=body)
    submit = client.post(f"/{route}", json={**body, "celery": True})
    assert sync.status_code == submit.status_code == 422, (sync.text, submit.text)
    assert sync.json()["error_data"] == submit.json()["error_data"]
    assert submit.json()["error_data"].startswith(f"{field}:")


def test_async_inputs_are_captured_at_submit(client, image_server):
    _Images.files["/once.png"] = png((320, 256), (1, 2, 3))
    env = client.post("/getImageToImage", json={"app_id": "ap-sd15-img2img", "image": f"{image_server}/once.png",
                                               "num_inference_steps": 2, "strength": 0.5, "celery": True}).json()
    assert env["status"] == "PENDING", env
    del _Images.files["/once.png"]  # the URL is gone (a presigned input URL that expired)
    done = wait_for(client, env["task_id"])
    assert done["status"] == "SUCCESS", done
    assert done["meta"]["width"] == 320 and done["meta"]["height"] == 256


def test_webhook_urls_are_redacted_in_input_and_records(client, service):
    url = "http://127.0.0.1:9/hooks/T0KEN-in-the-path"
    env = client.post("/getTextToImage", json={**QUICK, "celery": True, "webhook": url}).json()
    assert env["input"]["webhook"].startswith("redacted:sha256:")
    assert env["input"]["webhook"] == "redacted:sha256:" + hashlib.sha256(url.encode()).hexdigest()[:16]
    done = wait_for(client, env["task_id"])
    assert "T0KEN" not in json.dumps(done)
    record = service.workdir / f"data/objects/data/tenants/tenant-a/tasks/{env['task_id']}/record.json"
    assert record.exists() and "T0KEN" not in record.read_text()


# -- the file route ----------------------------------------------------------------


def _raw_get(service, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    conn.request("GET", path)  # sent as written: no client-side normalisation of '..'
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, json.loads(body) if body.startswith(b"{") else {}


def test_the_file_route_refuses_traversal_and_expired_links(client, service):
    env = client.post("/getTextToImage", json=QUICK).json()
    url = urlsplit(env["output"][0])
    assert httpx.get(env["output"][0]).status_code == 200
    for path in (url.path.replace("/tenants/", "/tenants/tenant-a/../../"),
                 url.path.replace("/tenants/", "/%2e%2e/%2e%2e/tenants/"),
                 url.path + "/..%2f..%2f.signing-secret",
                 "/api/v1/studio/files/..%2F.signing-secret"):
        status, body = _raw_get(service, f"{path}?{url.query}")
        assert status == 404 and body.get("error") == "NotFound", path
    # Links signed with the real secret for a key that climbs out: refused by the key rules
    # themselves, not only by the signature.
    secret = (service.workdir / "data/objects/.signing-secret").read_bytes().strip()
    later = int(time.time()) + 600
    for evil in ("tenants/tenant-a/../../.signing-secret", "../.signing-secret", "tenants/tenant-a/../tenant-b/x"):
        signature = hmac.new(secret, f"{evil}\n{later}".encode(), hashlib.sha256).hexdigest()
        for path in (evil, evil.replace("..", "%2e%2e")):
            status, body = _raw_get(service, f"/api/v1/studio/files/{path}?expires={later}&signature={signature}")
            assert status == 404 and body.get("error") == "NotFound", path
            assert secret.decode() not in json.dumps(body)
    # A link signed correctly but past its expiry.
    key = url.path.split("/files/", 1)[1]
    expires = int(time.time()) - 1
    signature = hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()
    route = f"{service.base}/api/v1/studio/files/{quote(key)}"
    r = httpx.get(f"{route}?expires={expires}&signature={signature}")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    later = expires + 3600  # the same signing, not yet expired: served (so the 404 above was the expiry)
    fresh = hmac.new(secret, f"{key}\n{later}".encode(), hashlib.sha256).hexdigest()
    assert httpx.get(f"{route}?expires={later}&signature={fresh}").status_code == 200


# -- secrets and listeners ---------------------------------------------------------


def _replicas(service) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for pid in session_members(service.proc.pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace").strip()
        except OSError:
            continue
        if title.startswith("ray::"):
            found.setdefault(title.split(".")[0].removeprefix("ray::"), []).append(pid)
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_each_replica_holds_only_the_secrets_it_needs(service):
    replicas = _replicas(service)
    assert {"ServeReplica:studio:ingress", "ServeReplica:studio:tasks", "ServeController", "ProxyActor"} <= set(replicas)
    for pid in set(session_members(service.proc.pid)) - {service.proc.pid}:  # Ray's own processes too
        try:
            text = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert KEY_A not in text and KEY_B not in text, f"pid {pid} holds an API key"
        if pid not in replicas["ServeReplica:studio:tasks"]:
            assert WEBHOOK_SECRET not in text, f"pid {pid} holds a webhook secret"
    webhook_holders = []
    for title, pids in replicas.items():
        for pid in pids:
            env = _environ(pid)
            text = "\n".join(f"{k}={v}" for k, v in env.items())
            assert KEY_A not in text and KEY_B not in text, f"{title} holds an API key"
            assert "STUDIO_API_KEYS" not in env, title
            if WEBHOOK_SECRET in text:
                webhook_holders.append(title)
            if title == "ServeReplica:studio:ingress":
                assert "STUDIO_API_KEY_DIGESTS" in env and "tenant-a" in env["STUDIO_WEBHOOK_TENANTS"]
    assert set(webhook_holders) == {"ServeReplica:studio:tasks"}, webhook_holders


def _listening() -> dict[int, str]:
    """inode -> local address of every listening TCP socket on the machine."""
    found = {}
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            raw = fields[1].split(":")[0]
            if v6:
                words = [raw[i:i + 8] for i in range(0, 32, 8)]
                addr = bytes.fromhex("".join(bytes.fromhex(w)[::-1].hex() for w in words))
                text = str(ipaddress.IPv6Address(addr))
            else:
                text = ".".join(str(b) for b in bytes.fromhex(raw)[::-1])
            found[int(fields[9])] = text
    return found


def test_nothing_the_service_started_listens_beyond_loopback(service):
    listening = _listening()
    seen = []
    for pid in session_members(service.proc.pid):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = fd.readlink().as_posix()
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in listening:
                    seen.append((pid, listening[inode]))
    assert seen, "found no listening sockets at all"
    def loopback(text: str) -> bool:
        address = ipaddress.ip_address(text)
        mapped = getattr(address, "ipv4_mapped", None)
        return address.is_loopback or (mapped is not None and mapped.is_loopback)

    wide = [(pid, addr) for pid, addr in seen if not loopback(addr)]
    assert not wide, f"listening beyond loopback: {wide}"
