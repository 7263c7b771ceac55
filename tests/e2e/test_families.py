"""The conditioned apps and the seed-002 options over real HTTP, synchronously and with
``celery: true``: proxy → ingress → family replica (preprocessor, ControlNet, IP-Adapter,
LoRA, VAE, token merging, weighted prompts, safety checker) → store."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.e2e.test_tasks import wait_for

pytestmark = pytest.mark.e2e

FAST = {"num_inference_steps": 2, "seed": 3}
ROUTING_REPORT_SECONDS = 2.0
CANNY, DEPTH, POSE = "ap-1us0FK21Ach6eiWxo22is8", "ap-WrXnJBXy23XpPh6IlH5tRX", "ap-a1b2c3d4e5f6g7h8i9j0kq"
ILLUSION, VARIATION_SD15, VARIATION_SDXL = "ap-illusion-diffusion", "ap-sd15-variation", "ap-sdxl-variation"


def _pattern(size=(512, 512)) -> str:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), fill="black")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    env = r.json()
    assert env["status"] == "SUCCESS" and env["error"] is None, env
    return env


def _pixels(url: str) -> np.ndarray:
    if url.startswith("data:"):
        data = base64.b64decode(url.split(",", 1)[1])
    else:
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200
        data = r.content
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _run(client, body: dict, celery: bool) -> dict:
    r = client.post("/getImageToImage" if "image" in body else "/getTextToImage", json={**body, "celery": celery})
    if not celery:
        return _ok(r)
    assert r.status_code == 200, r.text
    env = wait_for(client, r.json()["task_id"])
    assert env["status"] == "SUCCESS", env
    return env


@pytest.mark.parametrize("celery", [False, True], ids=["sync", "celery"])
@pytest.mark.parametrize("app_id", [CANNY, DEPTH, POSE, ILLUSION])
def test_controlnet_apps_return_images_and_the_control_image(client, app_id, celery):
    env = _run(client, {"app_id": app_id, "image": _pattern(), "strength": 0.8, "return_control_image": True,
                        **FAST}, celery)
    assert len(env["output"]) == 2 and env["meta"]["control_image"] is True and len(env["meta"]["seeds"]) == 1
    generated, control = (_pixels(u) for u in env["output"])
    assert generated.shape == control.shape == (512, 512, 3)
    if app_id == ILLUSION:  # the pattern is the control image, as sent
        assert control[0, 0].tolist() == [255, 255, 255] and control[256, 256].tolist() == [0, 0, 0]
    if app_id == CANNY:  # edges of the square only
        assert control[256, 256].tolist() == [0, 0, 0] and control.max() == 255


@pytest.mark.parametrize("celery", [False, True], ids=["sync", "celery"])
@pytest.mark.parametrize("app_id", [VARIATION_SD15, VARIATION_SDXL])
def test_variation_apps(client, app_id, celery):
    env = _run(client, {"app_id": app_id, "image": _pattern(), "strength": 0.5, **FAST}, celery)
    assert len(env["output"]) == 1 and env["meta"]["width"] == 512


def test_strength_conditions_the_controlnet(client):
    a, b = (_ok(client.post("/getImageToImage", json={"app_id": CANNY, "image": _pattern(), "strength": s,
                                                       "base64": True, **FAST})) for s in (0.1, 1.0))
    assert np.abs(_pixels(a["output"][0]) - _pixels(b["output"][0])).max() > 0


def test_apps_lists_the_new_apps_with_their_fields_and_options(client):
    apps = {a["app_id"]: a for a in client.get("/apps").json()["apps"]}
    assert {CANNY, DEPTH, POSE, ILLUSION, VARIATION_SD15, VARIATION_SDXL} <= set(apps)
    assert apps[CANNY]["task"] == "controlnet" and apps[CANNY]["inputs"] == ["image"]
    assert "conditioning scale" in apps[CANNY]["strength"] and "0.8 + 1.2" in apps[ILLUSION]["strength"]
    assert apps[ILLUSION]["defaults"]["prompt"].startswith("medieval village")
    for app_id in ("ap-sd15-txt2img", VARIATION_SDXL, CANNY):  # from the loaded model
        assert apps[app_id]["loras"] == ["tiny-clay", "tiny-ink", "tiny-sketch"]
        assert apps[app_id]["vaes"] == ["tiny-vae-alt"] and apps[app_id]["safety_checker"] is True


@pytest.mark.parametrize("celery", [False, True], ids=["sync", "celery"])
def test_options_change_the_image(client, celery):
    base = {"app_id": "ap-sd15-txt2img", "prompt": "a cat", "height": 256, "width": 256, "base64": True, **FAST}
    plain = _pixels(_run(client, base, celery)["output"][0])
    for option in ({"tomesd": True}, {"vae": "tiny-vae-alt"}, {"prompt": "a (cat:1.6)"},
                   {"lora_model": "tiny-ink,tiny-clay", "lora_strength": "0.5,1"}):
        other = _pixels(_run(client, {**base, **option}, celery)["output"][0])
        assert np.abs(plain - other).max() > 0, option
    checked = _run(client, {**base, "safety_checker": True, "safety_checker_type": "blur"}, celery)
    assert checked["meta"]["nsfw"] == [False]  # the tiny checker flags nothing at its own thresholds
    assert np.abs(plain - _pixels(checked["output"][0])).max() == 0


@pytest.mark.parametrize("celery", [False, True], ids=["sync", "celery"])
def test_options_a_family_cannot_honour_are_422_naming_the_field(client, celery):
    base = {"app_id": "ap-sd15-txt2img", "height": 256, "width": 256, "celery": celery, **FAST}
    for option, field in (({"lora_model": "no-such"}, "lora_model"), ({"vae": "nope"}, "vae"),
                          ({"lora_model": "tiny-ink", "lora_strength": "2"}, "lora_strength")):
        r = client.post("/getTextToImage", json={**base, **option})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "ValidationError" and r.json()["error_data"].startswith(f"{field}:"), r.json()
    r = client.post("/getImageToImage", json={"app_id": "ap-sd15-img2img", "image": _pattern((256, 256)),
                                              "return_control_image": True, "celery": celery, **FAST})
    assert r.status_code == 422 and "return_control_image" in r.json()["error_data"]


def test_lora_stacks_route_to_the_replica_that_holds_them_and_the_lru_one_is_evicted(client):
    """Two replicas, three stacks each at most (``LORA_STACKS_PER_REPLICA``): a repeated stack
    lands on the replica that loaded it, warm; seven stacks overflow the six slots, so going
    through them again finds at least one evicted (loaded again) — the least recently used."""
    from itertools import combinations

    from tests.support.configs import LORA_APP

    names = ["tiny-ink", "tiny-sketch", "tiny-clay"]
    stacks = [",".join(c) for n in (1, 2, 3) for c in combinations(names, n)]  # 7 distinct stacks

    def call(stack: str) -> tuple[str, str]:
        r = client.post("/getTextToImage", json={"app_id": LORA_APP, "lora_model": stack, "height": 256,
                                                 "width": 256, "num_inference_steps": 1})
        _ok(r)
        if r.headers["x-studio-lora-stack"] == "loaded":
            # A replica reports the stacks it holds to the routers through Serve's controller;
            # give that report time to arrive before the next request is routed.
            time.sleep(ROUTING_REPORT_SECONDS)
        return r.headers["x-studio-replica"], r.headers["x-studio-lora-stack"]

    first_replica, state = call(stacks[0])
    assert state == "loaded"
    for _ in range(3):  # the same stack again: the same replica, already warm
        assert call(stacks[0]) == (first_replica, "warm")
    holder = {stacks[0]: first_replica}
    for stack in stacks[1:]:
        replica, state = call(stack)
        assert state == "loaded"
        holder[stack] = replica
    assert len(set(holder.values())) == 2  # both replicas took stacks
    # Seven stacks, six slots: the replica holding four evicted its least recently used one.
    counts = {r: list(holder.values()).count(r) for r in set(holder.values())}
    busiest = max(counts, key=counts.get)
    evicted = next(s for s in stacks if holder[s] == busiest)  # the first it loaded
    replica, state = call(evicted)
    assert state == "loaded"  # it had to load it again
    latest = [s for s in stacks if holder[s] == busiest][-1]
    assert call(latest) == (busiest, "warm")  # the most recent one is still there
