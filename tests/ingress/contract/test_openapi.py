"""The published OpenAPI document tells the truth, checked in process (no Ray):
statuses per route, the registry's app ids per route, the schema's own rules, and a
short schemathesis run (every check) against the app with a stand-in family."""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path

import jsonschema
import jsonschema_rs
import jsonschema_rs.canonical
import pytest
import schemathesis
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from PIL import Image

from deployments.catalog import TASKS, route_tasks
from deployments.types import Output, Result
from ingress.contract.api import PREFIX, Studio, create_api
from ingress.contract.auth import KeyRing
from ingress.tasks.service import TaskService
from ingress.wiring.registry import Registry, ServiceConfig
from ingress.wiring.settings import IngressSettings
from storage.local import LocalObjectStore
from storage.tasks import TaskStore

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-openapi-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
GENERATION = ("getTextToImage", "getImageToImage", "getImagetoImage", "getTextToSpeech")
ERRORS = {401, 408, 413, 422, 500, 503}
STATUSES = {
    ("post", "getTextToImage"): {200, 429, 504, *ERRORS},
    ("post", "getImageToImage"): {200, 429, 504, *ERRORS},
    ("post", "getImagetoImage"): {200, 429, 504, *ERRORS},
    ("post", "getImage"): {200, 404, 429, *ERRORS},
    ("post", "cancelTask"): {200, 404, 429, *ERRORS},
    ("get", "status/{task_id}"): {200, 401, 404, 422, 429, 500},
    ("get", "apps"): {200, 401, 429, 500},
    ("get", "get-status"): {200, 503},
    ("get", "files/{key}"): {200, 404, 422, 500},
    ("post", "getTextToSpeech"): {200, 429, 504, *ERRORS},
    ("post", "chat"): {200, 404, 429, 504, *ERRORS},
    ("post", "streamChat"): {200, 404, 429, 504, *ERRORS},
    ("post", "pdfVectorStore"): {200, 404, 429, 504, *ERRORS},
    ("post", "listDocuments"): {200, 404, 401, 422, 429, 500, 503},
    ("post", "getDocument"): {200, 404, 401, 422, 429, 500, 503},
    ("post", "deleteDocument"): {200, 404, 401, 422, 429, 500, 503},
}


class _Family:
    """Stands in for every family deployment: one output per image, nothing run."""

    async def run(self, family, gpu, job, timeout):
        outputs = [Output(key=f"tenants/{job.tenant}/images/{job.request_id}/{i}.png", content_type="image/png")
                   for i in range(getattr(job, "batch", 1))]
        return Result(outputs=outputs, meta={"seeds": list(range(getattr(job, "batch", 1)))})


def _studio(root: Path, tasks: bool = True) -> Studio:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    store = LocalObjectStore(root, "http://testserver", b"openapi-test-secret")
    settings_ = IngressSettings()

    async def kick(*_):
        return None

    return Studio(
        registry=Registry(ServiceConfig.model_validate({**args, "models_dir": str(root)})),
        keys=KeyRing({KEY: "tenant-a"}),
        dispatcher=_Family(),
        store=store,
        settings=settings_,
        url_expiry_seconds=3600,
        tasks=TaskService(TaskStore(store), 3600, settings_, kick) if tasks else None,
    )


_ROOT = tempfile.TemporaryDirectory(prefix="studio-openapi-")
STUDIO = _studio(Path(_ROOT.name))
APP = create_api(STUDIO)
SPEC = APP.openapi()


def _op(method: str, route: str) -> dict:
    return SPEC["paths"][f"{PREFIX}/{route}"][method]


def _body_schema(route: str) -> dict:
    return _op("post", route)["requestBody"]["content"]["application/json"]["schema"]


def _validator(schema: dict) -> jsonschema.Validator:
    return jsonschema.Draft202012Validator(schema)


def test_every_route_is_published_with_every_status_it_can_answer():
    published = {(m, path.removeprefix(f"{PREFIX}/")) for path, ops in SPEC["paths"].items() for m in ops}
    assert published == set(STATUSES)
    envelope = {"$ref": "#/components/schemas/Envelope"}
    for (method, route), codes in STATUSES.items():
        responses = _op(method, route)["responses"]
        assert {int(c) for c in responses} == codes, route
        body = {"$ref": "#/components/schemas/Health"} if route == "get-status" else envelope
        for code in codes - {200}:
            assert responses[str(code)]["content"]["application/json"]["schema"] == body, (route, code)
        if 503 in codes:
            assert responses["503"]["headers"]["Retry-After"]["required"] is True
    assert "image/png" in _op("get", "files/{key}")["responses"]["200"]["content"]


def test_limits_in_the_descriptions_are_this_deployments():
    s = STUDIO.settings
    assert f"at most {s.max_body_bytes} bytes" in _op("post", "getTextToImage")["responses"]["413"]["description"]
    assert f"at most {s.max_image_body_bytes} bytes" in _op("post", "getImageToImage")["responses"]["413"]["description"]
    assert f"{s.sync_timeout_seconds:g} s" in _op("post", "getTextToImage")["responses"]["504"]["description"]


def test_every_route_but_files_needs_the_bearer_key():
    assert SPEC["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "API key",
        "description": "`Authorization: Bearer <api key>`; each key belongs to one tenant.",
    }
    for (method, route) in STATUSES:
        security = _op(method, route).get("security")
        assert security == (None if route in ("files/{key}", "get-status") else [{"ApiKey": []}]), route


@pytest.mark.parametrize("route", GENERATION)
def test_app_id_is_the_registrys_apps_of_that_route(route):
    served = route_tasks()["getImageToImage" if route == "getImagetoImage" else route]
    expected = [a.app_id for a in STUDIO.registry.config.apps if a.task in served]
    schema = _body_schema(route)
    assert schema["properties"]["app_id"]["enum"] == expected
    branches = schema["allOf"][0]["oneOf"]
    assert sorted(i for b in branches for i in b["properties"]["app_id"]["enum"]) == sorted(expected)
    v = _validator(schema)
    other = next(a.app_id for a in STUDIO.registry.config.apps if a.app_id not in expected)
    assert not v.is_valid({"app_id": other})


@pytest.mark.parametrize("route", [*GENERATION, "getImage", "cancelTask"])
def test_schemathesis_can_generate_from_each_body_schema(route):
    # Its generator gives up on schemas whose allOf/anyOf expand past a budget: a new rule
    # between fields (or many distinct apps) must not push a route's schema there.
    canonical = jsonschema_rs.canonicalize(_body_schema(route), draft=jsonschema_rs.Draft202012)
    assert canonical.kind != jsonschema_rs.canonical.CanonicalKind.RAW, canonical.view().reason


def test_each_apps_branch_carries_its_limits_gpus_and_inputs():
    v = _validator(_body_schema("getImageToImage"))
    image = {"image": "https://example.com/a.png"}
    assert v.is_valid({"app_id": "ap-sdxl-img2img", **image, "height": 512, "inference_type": "h100"})
    assert not v.is_valid({"app_id": "ap-sdxl-img2img", **image, "height": 256})  # SDXL: 512..1536
    assert not v.is_valid({"app_id": "ap-sdxl-img2img", **image, "batch": 5})  # batch_max 4
    assert not v.is_valid({"app_id": "ap-sdxl-img2img", **image, "inference_type": "a10g"})
    assert not v.is_valid({"app_id": "ap-sdxl-img2img"})  # image required
    assert not v.is_valid({"app_id": "ap-sd15-inpaint", **image})  # mask_url required
    assert not v.is_valid({"app_id": "ap-sd15-img2img", **image, "mask_url": "https://example.com/m.png"})
    assert not v.is_valid({"app_id": "ap-sd15-img2img", **image, "return_control_image": True})
    assert v.is_valid({"app_id": "ap-1us0FK21Ach6eiWxo22is8", **image, "return_control_image": "yes"})


def test_rules_between_fields_and_flag_spellings():
    v = _validator(_body_schema("getTextToImage"))
    app = {"app_id": "ap-sd15-txt2img"}
    assert not v.is_valid({**app, "webhook": "https://example.com/hook"})
    assert v.is_valid({**app, "webhook": "https://example.com/hook", "celery": True})
    assert not v.is_valid({**app, "reference_id": "r1", "celery": "no"})
    assert v.is_valid({**app, "reference_id": "r1", "celery": " Yes"})
    assert not v.is_valid({**app, "safety_checker_type": "blur", "safety_checker": False})
    assert v.is_valid({**app, "safety_checker_type": "blur"})
    for bad in (1, 0, "maybe", "512"):
        assert not v.is_valid({**app, "base64": bad}), bad
    assert not v.is_valid({**app, "height": "512"})


def test_without_async_tasks_celery_is_false_only():
    spec = create_api(_studio(Path(_ROOT.name), tasks=False)).openapi()
    schema = spec["paths"][f"{PREFIX}/getTextToImage"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    v = _validator(schema)
    assert v.is_valid({"app_id": "ap-sd15-txt2img", "celery": False})
    assert not v.is_valid({"app_id": "ap-sd15-txt2img", "celery": True})


def test_get_image_needs_an_id_or_a_ref_id():
    v = _validator(_body_schema("getImage"))
    assert v.is_valid({"id": "0123abc"}) and v.is_valid({"refID": "order-17"})
    assert v.is_valid({"id": None, "refID": "order-17"})
    for bad in ({}, {"id": None}, {"id": None, "refID": None}, {"id": ""}, {"id": "a/b"}):
        assert not v.is_valid(bad), bad


def test_status_path_parameter_is_constrained():
    (param,) = _op("get", "status/{task_id}")["parameters"]
    assert param["in"] == "path" and param["required"] is True
    assert {k: param["schema"][k] for k in ("minLength", "maxLength", "pattern")} == {
        "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9]+$"}


def test_no_text_cites_documents_outside_the_repository():
    text = json.dumps(SPEC)
    for word in ("seed 0", "seed-0", "seeds/", "CONTRACT", "DESIGN"):
        assert word not in text, word


def test_the_server_keeps_to_the_published_rules():
    client = TestClient(APP)
    r = client.post(f"{PREFIX}/getTextToImage", content=b"{}")
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    too_big = b" " * (STUDIO.settings.max_body_bytes + 1)  # the key is checked before the body is read
    assert client.post(f"{PREFIX}/getImage", content=too_big).status_code == 401
    assert client.post(f"{PREFIX}/getImage", content=too_big, headers=AUTH).status_code == 413
    r = client.post(f"{PREFIX}/getTextToImage", headers=AUTH, json={"app_id": "ap-sd15-txt2img", "height": "512"})
    assert r.status_code == 422 and r.json()["error_data"].startswith("height: Input should be a valid integer")
    r = client.post(f"{PREFIX}/getTextToImage", headers=AUTH, json={"app_id": "ap-sd15-txt2img", "base64": 1})
    assert r.status_code == 422 and r.json()["error_data"].startswith("base64:")
    r = client.post(f"{PREFIX}/getTextToImage", headers=AUTH, json={
        "app_id": "ap-sd15-txt2img", "num_inference_steps": 2.0, "height": 256, "width": 256, "base64": "no"})
    assert r.status_code == 200 and r.json()["input"]["num_inference_steps"] == 2
    assert client.get(f"{PREFIX}/status/%C3%A9t%C3%A9", headers=AUTH).status_code == 422
    assert client.get(f"{PREFIX}/status/0123abc", headers=AUTH).status_code == 404
    r = client.put(f"{PREFIX}/getImage", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"] == "MethodNotAllowed"


# -- schemathesis, every check, in process ------------------------------------------

def _png_data_uri(size: int = 256) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 140, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


PNG = _png_data_uri()
# get-status reads Ray Serve, absent here (it answers 503 "unknown"): tests/ingress/contract/test_health.py.
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path=f"{PREFIX}/get-status")


def tame(body: dict) -> None:
    """A schema-valid generation body, narrowed where validity depends on more than the
    body's shape: inputs must decode as images, a webhook needs a tenant secret and a
    public host, and strength × num_inference_steps must reach 1 (a product JSON Schema
    cannot state)."""
    for field in ("image", "mask_url", "bg_image"):
        if body.get(field):
            body[field] = PNG
    body.pop("webhook", None)
    app = STUDIO.registry.app(body.get("app_id", ""))
    if app is not None and TASKS[app.task].strength is not None:
        steps = body.get("num_inference_steps") or app.defaults.num_inference_steps
        strength = body.get("strength")
        if (strength if strength is not None else app.defaults.strength) * steps < 1:
            body["strength"] = 1.0


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_conformance(case):
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and isinstance(case.body, dict) and case.path.rsplit("/", 1)[-1] in GENERATION:
        tame(case.body)
    case.call_and_validate(headers=AUTH)
