"""The registry in serve_config.yaml, its validation and the per-app rules."""

import copy
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from ingress.contract.errors import ValidationFailed
from ingress.contract.schemas.generation import ImageToImageRequest, TextToImageRequest
from ingress.contract.validation import check_for_app, parse
from ingress.wiring.registry import Registry, ServiceConfig

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def args():
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    return config["applications"][0]["args"]


@pytest.fixture(scope="module")
def registry(args):
    return Registry(ServiceConfig.model_validate(args))


def t2i(**body):
    return parse(TextToImageRequest, {"app_id": "ap-sd15-txt2img", **body})


def test_shipped_apps(registry):
    apps = {a["app_id"]: a for a in registry.public()}
    families = {a["family"] for a in apps.values()}
    tasks = {(a["family"], a["task"]) for a in apps.values()}
    assert {"sd15", "sdxl"} <= families
    for fam in ("sd15", "sdxl"):
        assert {(fam, "text2img"), (fam, "img2img"), (fam, "inpaint")} <= tasks
    assert apps["ap-sdxl-txt2img"]["limits"]["height"] == {"min": 512.0, "max": 1536.0}


def test_public_view_has_no_model_sources(registry):
    text = repr(registry.public())
    assert "tiny-sd15" not in text and "models_dir" not in text and "path" not in text


def test_one_deployment_per_family_and_gpu(registry):
    keys = registry.config.deployment_keys()
    assert keys == [("sd15", "a10g"), ("sd15", "a100"), ("sdxl", "a100"), ("sdxl", "h100"), ("rembg", "a10g"),
                    ("esrgan", "a10g"), ("sd-x4", "a10g"), ("piper", "a10g"), ("elevenlabs", "a10g"),
                    ("minilm", "a10g"), ("local-llm", "a10g")]  # the last two: the document store's and chat's


def test_default_gpu_is_first(registry):
    app, gpu = check_for_app("getTextToImage", t2i(), registry)
    assert (app.app_id, gpu) == ("ap-sd15-txt2img", "a10g")
    assert check_for_app("getTextToImage", t2i(inference_type="a100"), registry)[1] == "a100"


def test_gpu_the_app_lacks_lists_the_ones_it_has(registry):
    with pytest.raises(ValidationFailed, match=r"inference_type: .*not deployed on h100; allowed: one of a10g, a100"):
        check_for_app("getTextToImage", t2i(inference_type="h100"), registry)


def test_unknown_app_lists_valid_ids(registry):
    req = parse(TextToImageRequest, {"app_id": "ap-nope"})
    with pytest.raises(ValidationFailed, match=r"app_id: unknown app 'ap-nope'; allowed: one of ap-sd15-txt2img"):
        check_for_app("getTextToImage", req, registry)


def test_wrong_route_for_app(registry):
    req = parse(TextToImageRequest, {"app_id": "ap-sd15-img2img"})
    with pytest.raises(ValidationFailed, match="call getImageToImage"):
        check_for_app("getTextToImage", req, registry)


def test_app_tightens_limits(registry):
    req = parse(TextToImageRequest, {"app_id": "ap-sdxl-txt2img", "height": 448})
    with pytest.raises(ValidationFailed, match=r"height: 448 is outside app ap-sdxl-txt2img's range; allowed: 512..1536"):
        check_for_app("getTextToImage", req, registry)
    ok = parse(TextToImageRequest, {"app_id": "ap-sdxl-txt2img", "height": 512, "batch": 4})
    check_for_app("getTextToImage", ok, registry)
    over = parse(TextToImageRequest, {"app_id": "ap-sdxl-txt2img", "batch": 5})
    with pytest.raises(ValidationFailed, match=r"batch: 5 exceeds .*allowed: 1..4"):
        check_for_app("getTextToImage", over, registry)


@pytest.mark.parametrize(
    "field,value",
    [("webhook", "https://example.com/hook"), ("reference_id", "r-1")],
)
def test_options_the_app_cannot_honour_are_422(registry, field, value):
    with pytest.raises(ValidationFailed, match=f"{field}:"):
        check_for_app("getTextToImage", t2i(**{field: value}), registry)


def test_task_options_only_where_the_task_has_them(registry):
    from ingress.contract.schemas.generation import ImageToImageRequest

    body = {"app_id": "ap-sd15-img2img", "image": "aGVsbG8=", "return_control_image": True}
    with pytest.raises(ValidationFailed, match="return_control_image: app ap-sd15-img2img .*does not support it"):
        check_for_app("getImageToImage", parse(ImageToImageRequest, body), registry)
    body["app_id"] = "ap-1us0FK21Ach6eiWxo22is8"
    check_for_app("getImageToImage", parse(ImageToImageRequest, body), registry)
    with pytest.raises(ValidationFailed, match="safety_checker_type: it applies only with safety_checker: true"):
        check_for_app("getTextToImage", t2i(safety_checker=False, safety_checker_type="blur"), registry)


def test_options_turned_off_are_fine(registry):
    check_for_app("getTextToImage", t2i(tomesd="no", safety_checker="no", celery=False), registry)
    check_for_app("getTextToImage", t2i(celery=True, webhook="https://example.com/h", reference_id="r"), registry)


def test_image_routes_need_their_inputs(registry):
    req = parse(ImageToImageRequest, {"app_id": "ap-sd15-inpaint", "image": "https://example.com/a.png"})
    with pytest.raises(ValidationFailed, match="mask_url: required"):
        check_for_app("getImageToImage", req, registry)
    req = parse(ImageToImageRequest, {"app_id": "ap-sd15-img2img"})
    with pytest.raises(ValidationFailed, match="image: required"):
        check_for_app("getImageToImage", req, registry)


def test_config_errors_are_caught(args):
    bad = copy.deepcopy(args)
    bad["apps"][0]["family"] = "nope"
    with pytest.raises(ValidationError, match="unknown family"):
        ServiceConfig.model_validate(bad)
    bad = copy.deepcopy(args)
    bad["apps"].append(copy.deepcopy(bad["apps"][0]))
    with pytest.raises(ValidationError, match="duplicate app_id"):
        ServiceConfig.model_validate(bad)
    bad = copy.deepcopy(args)
    bad["apps"][3]["defaults"]["height"] = 256
    with pytest.raises(ValidationError, match="outside its limits"):
        ServiceConfig.model_validate(bad)


def _broken(args, change) -> dict:
    bad = copy.deepcopy(args)
    change(bad)
    return bad


@pytest.mark.parametrize(("change", "words"), [
    (lambda a: a["documents"].update(qdrant_url="http://qdrant:6333"), "exactly one of `qdrant_path`"),
    (lambda a: a["documents"].update(deployment={"num_replicas": 2}), "local mode is single-process"),
    (lambda a: a["documents"].update(embedder="local-llm"), "must name a embedder family"),
    (lambda a: a["documents"]["limits"].update(chunk_overlap=1000), "chunk_overlap must be at most half"),
    (lambda a: a["chat"]["providers"]["Local"].pop("family"), "give `family` and `inference_type` together"),
    (lambda a: [a["chat"]["providers"]["Local"].pop(k) for k in ("family", "inference_type")],
     "providers.Local needs `family`"),
    (lambda a: a["chat"]["providers"]["OpenAI"].update(vision_models=["gpt-9"]), "vision_models gpt-9"),
    (lambda a: a["chat"]["providers"]["OpenAI"].update(default_model="gpt-9"), "default_model 'gpt-9'"),
    (lambda a: a["chat"]["enhance_prompt"].update(llm_model="gpt-4o"), "enhance_prompt: Local/gpt-4o"),
    (lambda a: a["chat"].update(max_tokens_default=9000), "max_tokens_default exceeds"),
    (lambda a: a["apps"].append({"app_id": "ap-embed", "name": "x", "family": "minilm", "task": "tts",
                                 "inference_types": ["a10g"]}), "task tts runs on tts families"),
])
def test_chat_and_documents_config_errors_are_caught(args, change, words):
    with pytest.raises(ValidationError, match=re.escape(words)):
        ServiceConfig.model_validate(_broken(args, change))


def test_a_config_without_chat_or_documents_deploys_neither(args):
    config = ServiceConfig.model_validate(_broken(args, lambda a: (a.pop("chat"), a.pop("documents"))))
    assert ("minilm", "a10g") not in config.deployment_keys() and ("local-llm", "a10g") not in config.deployment_keys()
