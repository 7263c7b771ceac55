"""Every route over real HTTP: proxy → ingress → family deployment → diffusers → store."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.e2e.conftest import KEY_B

pytestmark = pytest.mark.e2e

FAST = {"num_inference_steps": 2}


def _images(urls: list[str]) -> list[Image.Image]:
    out = []
    for url in urls:
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200, url
        assert r.headers["content-type"] == "image/png"
        out.append(Image.open(io.BytesIO(r.content)))
    return out


def _ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    env = r.json()
    assert env["status"] == "SUCCESS" and env["error"] is None, env
    return env


def test_apps_lists_the_registry(client):
    env = client.get("/apps").json()
    ids = {a["app_id"] for a in env["apps"]}
    assert {"ap-sd15-txt2img", "ap-sd15-img2img", "ap-sd15-inpaint", "ap-sdxl-txt2img"} <= ids


def test_auth_is_required(service):
    r = httpx.post(f"{service.api}/getTextToImage", json={"app_id": "ap-sd15-txt2img"})
    assert r.status_code == 401
    assert r.json()["error"] == "Unauthorized"
    r = httpx.get(f"{service.api}/apps", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"


def test_text_to_image_batch_and_envelope(client):
    env = _ok(client.post("/getTextToImage", json={
        "app_id": "ap-sd15-txt2img", "prompt": "a red fox", "height": 256, "width": 320, "batch": 3, **FAST}))
    assert len(env["output"]) == 3 and len(env["meta"]["seeds"]) == 3
    assert env["app_id"] == "ap-sd15-txt2img" and env["task_id"]
    assert env["input"]["prompt"] == "a red fox" and env["time_required"] > 0
    for img in _images(env["output"]):
        assert img.size == (320, 256)


def test_seed_reproducibility(client):
    body = {"app_id": "ap-sd15-txt2img", "height": 256, "width": 256, "seed": 1234, "batch": 2, **FAST}
    a, b = (_ok(client.post("/getTextToImage", json=body)) for _ in range(2))
    assert a["meta"]["seeds"] == [1234, 1235]
    ia, ib = _images(a["output"]), _images(b["output"])
    assert [i.tobytes() for i in ia] == [i.tobytes() for i in ib]
    assert ia[0].tobytes() != ia[1].tobytes()
    c = _ok(client.post("/getTextToImage", json={**body, "seed": None}))
    assert c["meta"]["seeds"] != [1234, 1235]


def test_routing_by_inference_type(client):
    r = client.post("/getTextToImage", json={"app_id": "ap-sd15-txt2img", "height": 256, "width": 256, **FAST})
    assert _ok(r) and r.headers["x-studio-deployment"] == "sd15-a10g"
    r = client.post("/getTextToImage", json={"app_id": "ap-sdxl-txt2img", "height": 512, "width": 512,
                                            "inference_type": "h100", **FAST})
    assert _ok(r) and r.headers["x-studio-deployment"] == "sdxl-h100"
    r = client.post("/getTextToImage", json={"app_id": "ap-sd15-txt2img", "inference_type": "h100"})
    assert r.status_code == 422 and "allowed: one of a10g, a100" in r.json()["error_data"]


def test_scheduler_choice(client):
    body = {"app_id": "ap-sd15-txt2img", "height": 256, "width": 256, "seed": 7, **FAST}
    euler = _ok(client.post("/getTextToImage", json={**body, "scheduler": "EulerAncestralDiscreteScheduler"}))
    ddim = _ok(client.post("/getTextToImage", json={**body, "scheduler": "DDIMScheduler"}))
    assert _images(euler["output"])[0].tobytes() != _images(ddim["output"])[0].tobytes()


def test_validation_errors_name_field_and_range(client):
    r = client.post("/getTextToImage", json={"app_id": "ap-sd15-txt2img", "height": 1600, "batch": 9})
    assert r.status_code == 422
    env = r.json()
    assert env["error"] == "ValidationError"
    assert "height:" in env["error_data"] and "256..1536" in env["error_data"]
    assert "batch:" in env["error_data"] and "1..8" in env["error_data"]
    r = client.post("/getTextToImage", json={"app_id": "ap-nope"})
    assert r.status_code == 422 and "ap-sd15-txt2img" in r.json()["error_data"]
    r = client.post("/getTextToImage", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    r = client.post("/getTextToImage", json={"app_id": "ap-sd15-txt2img", "webhook": "https://example.com/h"})
    assert r.status_code == 422 and "celery: true" in r.json()["error_data"]


def test_image_to_image_keeps_input_size(client, image_server):
    env = _ok(client.post("/getImageToImage", json={
        "app_id": "ap-sd15-img2img", "file_url": f"{image_server}/photo.png", "strength": 0.5, **FAST}))
    assert _images(env["output"])[0].size == (320, 256)
    assert env["input"]["image"].startswith(image_server)


def test_alias_route_and_large_input_is_fitted(client, image_server):
    env = _ok(client.post("/getImagetoImage", json={
        "app_id": "ap-sd15-img2img", "image": f"{image_server}/huge.png", "strength": 1.0, "num_inference_steps": 1}))
    w, h = _images(env["output"])[0].size
    assert max(w, h) <= 1536 and w % 64 == 0 and h % 64 == 0
    assert (w, h) == (1536, 768)


def test_inpainting_with_mask(client, image_server):
    env = _ok(client.post("/getImageToImage", json={
        "app_id": "ap-sd15-inpaint", "image": f"{image_server}/square.png", "mask_url": f"{image_server}/mask.png",
        "seed": 3, **FAST}))
    assert _images(env["output"])[0].size == (256, 256)
    r = client.post("/getImageToImage", json={"app_id": "ap-sd15-inpaint", "image": f"{image_server}/square.png"})
    assert r.status_code == 422 and "mask_url" in r.json()["error_data"]


def test_base64_output_and_inline_input(client):
    src = io.BytesIO()
    Image.new("RGB", (256, 256), (10, 200, 30)).save(src, "PNG")
    inline = base64.b64encode(src.getvalue()).decode()
    env = _ok(client.post("/getImageToImage", json={
        "app_id": "ap-sd15-img2img", "image": inline, "base64": True, **FAST}))
    uri = env["output"][0]
    assert uri.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size == (256, 256)
    assert env["input"]["image"].startswith("<inline image")


@pytest.mark.parametrize("url", ["http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data/",
                                 "file:///etc/passwd", "http://[fd00:ec2::254]/"])
def test_private_input_urls_are_refused(client, url):
    r = client.post("/getImageToImage", json={"app_id": "ap-sd15-img2img", "image": url, **FAST})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"] == "InputFetchError"


def test_signed_urls_are_tenant_scoped_and_tamper_proof(client, service):
    env = _ok(client.post("/getTextToImage", json={"app_id": "ap-sd15-txt2img", "height": 256, "width": 256, **FAST}))
    url = env["output"][0]
    assert "/tenants/tenant-a/" in url
    assert httpx.get(url).status_code == 200
    forged = url.replace("tenant-a", "tenant-b")
    assert httpx.get(forged).status_code == 404
    assert httpx.get(url.split("?")[0]).status_code == 404
    # another tenant's key works, but its outputs live under its own prefix
    r = httpx.post(f"{service.api}/getTextToImage", headers={"Authorization": f"Bearer {KEY_B}"},
                   json={"app_id": "ap-sd15-txt2img", "height": 256, "width": 256, **FAST}, timeout=120)
    assert "/tenants/tenant-b/" in _ok(r)["output"][0]


def test_sdxl_apps(client, image_server):
    env = _ok(client.post("/getTextToImage", json={
        "app_id": "ap-sdxl-txt2img", "height": 512, "width": 576, "batch": 2, **FAST}))
    assert [i.size for i in _images(env["output"])] == [(576, 512)] * 2
    env = _ok(client.post("/getImageToImage", json={
        "app_id": "ap-sdxl-inpaint", "image": f"{image_server}/square.png", "mask_url": f"{image_server}/mask.png",
        "width": 512, "height": 512, **FAST}))
    assert _images(env["output"])[0].size == (512, 512)


def test_overload_answers_503_with_retry_after(client):
    # sd15 on a100 takes one request at a time and queues one: a burst (all 8 arrive within the first
    # job's first step, ~1 s at this size) must shed.
    body = {"app_id": "ap-sd15-txt2img", "inference_type": "a100", "height": 1024, "width": 1024,
            "num_inference_steps": 6}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.post("/getTextToImage", json=body), range(8)))
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes, codes
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.headers["retry-after"] == "3"
    assert shed.json()["error"] == "Overloaded"


def test_openapi_docs(service):
    assert httpx.get(f"{service.base}/docs").status_code == 200
    spec = httpx.get(f"{service.base}/openapi.json").json()
    for route in ("getTextToImage", "getImageToImage", "getImagetoImage", "apps"):
        assert f"/api/v1/studio/{route}" in spec["paths"]
    body = spec["paths"]["/api/v1/studio/getTextToImage"]["post"]["requestBody"]["content"]["application/json"]
    assert "guidance_scale" in body["schema"]["properties"]


def test_unknown_route_is_an_envelope(service):
    r = httpx.get(f"{service.api}/nope")
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
