"""Every documented range: the edge passes, one past it is a 422 naming the field and range."""

import pytest

from deployments.schedulers import SCHEDULER_NAMES
from ingress.contract.errors import ValidationFailed
from ingress.contract.schemas.generation import ImageToImageRequest, TextToImageRequest
from ingress.contract.validation import allowed, parse

BASE = {"app_id": "ap-x"}

# field, ok values, bad values, text the 422 must contain
EDGES = [
    ("height", [256, 1536, 512], [192, 1600, 300, "tall"], "256..1536, multiple of 64"),
    ("width", [256, 1536, 1024], [192, 1600, 520], "256..1536, multiple of 64"),
    ("num_inference_steps", [1, 50], [0, 51], "1..50"),
    ("guidance_scale", [1, 30, 7.5], [0.99, 30.01], "1..30"),
    ("batch", [1, 8], [0, 9], "1..8"),
    ("seed", [0, 2**32 - 1, None], [-1, 2**32], "0..4294967295"),
    ("clip_skip", [1, 8], [0, 9], "1..8"),
    ("inference_type", ["a10g", "a100", "h100", None], ["t4", "A100"], "one of a10g, a100, h100"),
    ("scheduler", SCHEDULER_NAMES, ["Euler", "FooScheduler"], "one of DDPMScheduler"),
    ("safety_checker_type", ["blur", "pixelate", "black", "sensitive_content_text"], ["sepia"], "one of blur"),
    ("prompt", ["", "x" * 4000], ["x" * 4001], "0..4000 characters"),
    ("negative_prompt", ["x" * 4000], ["x" * 4001], "0..4000 characters"),
    ("celery", [True, False, "yes", "no"], ["maybe", 3], "celery"),
    ("base64", [True, "yes", "no"], ["perhaps"], "base64"),
    ("lora_model", ["a", "x" * 1000], ["x" * 1001], "lora_model"),
    ("lora_strength", ["0.5,1", "x" * 200, 0.1, 1], ["x" * 201, 0.09, 1.01], "lora_strength"),
    ("vae", ["v", "x" * 200], ["x" * 201], "0..200 characters"),
    ("tomesd", [True, "no"], ["sometimes"], "tomesd"),
    ("priority", [0, 9, None], [-1, 10, "high"], "priority"),
]


@pytest.mark.parametrize("field,ok,bad,rule", EDGES, ids=[e[0] for e in EDGES])
def test_edges(field, ok, bad, rule):
    for value in ok:
        parse(TextToImageRequest, {**BASE, field: value})
    for value in bad:
        with pytest.raises(ValidationFailed) as err:
            parse(TextToImageRequest, {**BASE, field: value})
        assert err.value.message.startswith(f"{field}:"), err.value.message
        assert rule in err.value.message, err.value.message


@pytest.mark.parametrize("value,ok", [(0, True), (1, True), (0.5, True), (-0.01, False), (1.01, False)])
def test_strength_edges(value, ok):
    body = {**BASE, "image": "https://example.com/a.png", "strength": value}
    if ok:
        assert parse(ImageToImageRequest, body).strength == value
    else:
        with pytest.raises(ValidationFailed, match=r"strength: .*allowed: 0..1"):
            parse(ImageToImageRequest, body)


def test_app_id_required_and_bounded():
    with pytest.raises(ValidationFailed, match="app_id: Field required"):
        parse(TextToImageRequest, {})
    with pytest.raises(ValidationFailed, match="app_id"):
        parse(TextToImageRequest, {"app_id": ""})


def test_every_bad_field_is_named_at_once():
    with pytest.raises(ValidationFailed) as err:
        parse(TextToImageRequest, {**BASE, "height": 1600, "batch": 0, "guidance_scale": 31})
    for field in ("height", "batch", "guidance_scale"):
        assert f"{field}:" in err.value.message


def test_unknown_fields_are_ignored():
    req = parse(TextToImageRequest, {**BASE, "samples": 3, "enhance_prompt": "yes"})
    assert not hasattr(req, "samples")


def test_defaults():
    req = parse(TextToImageRequest, BASE)
    assert (req.batch, req.celery, req.base64, req.seed) == (1, False, False, None)
    assert req.guidance_scale is None  # filled from the app's defaults (7.5 unless the app says otherwise)


def test_file_url_is_an_alias_of_image():
    req = parse(ImageToImageRequest, {**BASE, "file_url": "https://example.com/a.png"})
    assert req.image == "https://example.com/a.png"


def test_body_must_be_an_object():
    with pytest.raises(ValidationFailed, match="JSON object"):
        parse(TextToImageRequest, ["app_id"])


def test_allowed_describes_ranges():
    assert allowed(TextToImageRequest, "height") == "256..1536, multiple of 64"
    assert allowed(TextToImageRequest, "inference_type") == "one of a10g, a100, h100"


def test_openapi_documents_every_field():
    schema = TextToImageRequest.model_json_schema()
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{name} has no description"
    assert schema["properties"]["height"]["anyOf"][0]["maximum"] == 1536
