"""The per-task rules of the studio's faces, backgrounds and upscaling apps at the ingress
(serve_config.yaml's registry): which fields each app takes, which it refuses by name, and
the rules between fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ingress.contract.errors import ValidationFailed
from ingress.contract.schemas.generation import ImageToImageRequest
from ingress.contract.validation import check_for_app, parse
from ingress.wiring.registry import Registry, ServiceConfig

ROOT = Path(__file__).resolve().parents[3]
IMG = "aGVsbG8="  # any non-empty image value: only the rules are checked here


@pytest.fixture(scope="module")
def registry() -> Registry:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    return Registry(ServiceConfig.model_validate(args))


def check(registry: Registry, **body):
    return check_for_app("getImageToImage", parse(ImageToImageRequest, {"image": IMG, **body}), registry)


def refused(registry: Registry, **body) -> str:
    with pytest.raises(ValidationFailed) as exc:
        check(registry, **body)
    return exc.value.message


@pytest.mark.parametrize("body", [
    {"app_id": "ap-background-removal"},
    {"app_id": "ap-background-removal", "bg_color": True, "r_color": 0, "g_color": 255, "b_color": 10},
    {"app_id": "ap-background-removal", "bg_color": "#00ff00"},
    {"app_id": "ap-background-removal", "blur": True, "celery": True},
    {"app_id": "ap-background-removal", "bg_image": "https://example.com/bg.png", "bg_color": False, "blur": False},
    {"app_id": "ap-upscale", "scale": 8},
    {"app_id": "ap-upscale-sd-x4", "scale": 4, "prompt": "sharp", "num_inference_steps": 10, "seed": 3},
    {"app_id": "ap-face-avatar", "gender": "female", "remove_background": True, "bg_color": "#FFF"},
    {"app_id": "ap-face-avatar", "prompt": None, "gender": "male", "strength": 0.5},
    {"app_id": "ap-face-consistency", "strength": 1.0, "height": 768, "width": 512},
    {"app_id": "ap-replace-background", "prompt": "a beach", "negative_prompt": "people", "batch": 2},
])
def test_each_app_takes_its_fields(registry, body):
    app, _ = check(registry, **body)
    assert app.app_id == body["app_id"]


@pytest.mark.parametrize("body,words", [
    ({"app_id": "ap-background-removal", "bg_color": True, "blur": True}, "bg_color, blur: choose one background"),
    ({"app_id": "ap-background-removal", "bg_image": "https://e.com/b.png", "blur": True}, "bg_image, blur: choose one"),
    ({"app_id": "ap-background-removal", "r_color": 10, "blur": True}, "bg_color, blur: choose one background"),
    ({"app_id": "ap-background-removal", "bg_color": "#123456", "r_color": 1}, "r_color: a hex bg_color already gives"),
    ({"app_id": "ap-background-removal", "prompt": "x"}, "prompt: app ap-background-removal (Background Removal) does not take it"),
    ({"app_id": "ap-background-removal", "batch": 2}, "does not take it; omit it; allowed: 1"),
    ({"app_id": "ap-background-removal", "seed": 0}, "seed: app ap-background-removal"),
    ({"app_id": "ap-background-removal", "tomesd": True}, "tomesd: app ap-background-removal"),
    ({"app_id": "ap-background-removal", "scale": 2}, "scale: app ap-background-removal (Background Removal) does not support it"),
    ({"app_id": "ap-upscale", "height": 512}, "height: app ap-upscale (Upscaling) does not take it"),
    ({"app_id": "ap-upscale", "strength": 0.5}, "strength: app ap-upscale (Upscaling) does not take it"),
    ({"app_id": "ap-upscale", "bg_image": "https://e.com/b.png"}, "bg_image: app ap-upscale (Upscaling) does not take it"),
    ({"app_id": "ap-upscale-sd-x4", "scale": 2}, "scale: app ap-upscale-sd-x4 (Stable Diffusion x4) makes 4x only; allowed: 4"),
    ({"app_id": "ap-upscale-sd-x4", "scheduler": "DDIMScheduler"}, "scheduler: app ap-upscale-sd-x4"),
    ({"app_id": "ap-face-avatar", "bg_color": True}, "bg_color: Face Avatar apps take a hex colour such as #FFFFFF"),
    ({"app_id": "ap-face-avatar", "lora_model": "x"}, "lora_model: app ap-face-avatar (Face Avatar) does not take it"),
    ({"app_id": "ap-face-consistency", "gender": "male"}, "gender: app ap-face-consistency (Face Consistency) does not support it"),
    ({"app_id": "ap-face-consistency", "remove_background": True}, "remove_background: app ap-face-consistency"),
    ({"app_id": "ap-replace-background", "strength": 0.3}, "strength: app ap-replace-background (Replace Background) does not"),
    ({"app_id": "ap-replace-background", "mask_url": IMG}, "mask_url: app ap-replace-background"),
    ({"app_id": "ap-sd15-img2img", "scale": 4}, "scale: app ap-sd15-img2img (Image To Image) does not support it"),
    ({"app_id": "ap-sd15-img2img", "blur": True}, "blur: app ap-sd15-img2img"),
])
def test_fields_an_app_cannot_honour_are_refused_by_name(registry, body, words):
    assert words in refused(registry, **body)


@pytest.mark.parametrize("body,words", [
    ({"app_id": "ap-upscale", "scale": 3}, "scale: Input should be 2, 4 or 8"),
    ({"app_id": "ap-background-removal", "bg_color": True, "r_color": 256}, "r_color: Input should be less than or equal to 255"),
    ({"app_id": "ap-background-removal", "bg_color": True, "g_color": -1}, "allowed: 0..255"),
    ({"app_id": "ap-face-avatar", "gender": "other"}, "gender: Input should be 'male', 'female' or 'neutral'"),
    ({"app_id": "ap-face-avatar", "bg_color": "#" + "F" * 20}, "bg_color"),
    ({"app_id": "ap-face-avatar", "bg_color": "white"}, "bg_color: String should match pattern"),
    ({"app_id": "ap-background-removal", "bg_color": "#GGGGGG"}, "bg_color"),
])
def test_schema_bounds_name_the_field_and_range(body, words):
    with pytest.raises(ValidationFailed) as exc:
        parse(ImageToImageRequest, {"image": IMG, **body})
    assert words in exc.value.message


def test_image_is_required_and_bg_image_optional(registry):
    with pytest.raises(ValidationFailed, match="image: required for Background Removal apps"):
        check_for_app("getImageToImage", parse(ImageToImageRequest, {"app_id": "ap-background-removal"}), registry)
    with pytest.raises(ValidationFailed, match="image: required for Upscaling apps"):
        check_for_app("getImageToImage", parse(ImageToImageRequest, {"app_id": "ap-upscale"}), registry)


def test_get_apps_lists_the_new_apps_with_their_fields(registry):
    apps = {a["app_id"]: a for a in registry.public()}
    assert apps["ap-background-removal"]["inputs"] == ["image", "bg_image"]
    assert apps["ap-background-removal"]["summary"] == "Background Removal"
    assert apps["ap-upscale"]["defaults"]["scale"] == 4 and apps["ap-upscale"]["strength"] is None
    assert "FaceID" in apps["ap-face-consistency"]["strength"]
    assert "{gender_word}" in apps["ap-face-avatar"]["defaults"]["prompt"]
    assert apps["ap-replace-background"]["routes"] == ["getImageToImage"]
    assert apps["ap-background-removal"]["options"] == ["bg_color", "r_color", "g_color", "b_color", "blur"]
    assert {"prompt", "seed", "batch", "strength"} <= set(apps["ap-background-removal"]["refused_fields"])
    assert apps["ap-face-avatar"]["options"] == ["gender", "remove_background", "bg_color"]
    assert apps["ap-upscale-sd-x4"]["options"] == ["scale"] and "prompt" not in apps["ap-upscale-sd-x4"]["refused_fields"]
    assert apps["ap-sd15-txt2img"]["options"] == [] and apps["ap-sd15-txt2img"]["refused_fields"] == ["strength"]


@pytest.mark.parametrize("app_id", ["ap-background-removal", "ap-face-avatar", "ap-upscale-sd-x4", "ap-upscale"])
def test_a_new_app_on_the_wrong_route_is_a_422_naming_the_route(registry, app_id):
    from ingress.contract.schemas.generation import TextToImageRequest

    with pytest.raises(ValidationFailed, match="call getImageToImage instead"):
        check_for_app("getTextToImage", parse(TextToImageRequest, {"app_id": app_id}), registry)


def test_colour_channels_alone_ask_for_a_colour_background(registry):
    app, _ = check(registry, app_id="ap-background-removal", g_color=0)
    assert app.task == "remove_background"
