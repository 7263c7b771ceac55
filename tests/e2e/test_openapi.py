"""The published OpenAPI document against the running service: schemathesis with every
check (``--checks all``), every phase, a bounded number of examples per operation.

Schemathesis runs as its own process (its CLI) with this module as its hooks file;
the hooks below register only there (``_APPS_ENV`` set). They narrow the schema-valid
generation bodies it sends where validity depends on more than a body's shape:

* ``image`` / ``mask_url`` become a real inline PNG (any other string cannot decode), with a
  face the tiny detector finds for the face apps;
* ``webhook`` is dropped (it needs the tenant's signing secret and a public host);
* the options the loaded model decides (scheduler and its options, ``clip_skip``, LoRA
  and VAE names) are dropped: their allowed values are the family's facts, not the
  registry's, and the schema is published before the families have loaded;
* cost: one image, two steps, the app's smallest size, and a strength that leaves one
  denoising step (``int(strength × steps) >= 1``, a product JSON Schema cannot state).

Bodies of the non-image routes are narrowed the same way: a chat body becomes a short,
valid conversation with the Local model (turn order, a provider's models and tool
combinations are rules between fields the schema cannot state, and the vendors are
fakes), a ``pdfVectorStore`` URL a small real PDF, and a Text To Speech ``voice_id`` is
dropped (a local voice's names are the loaded voice's facts).

Invalid (negative) cases are sent as generated. Async submits are cancelled at once
so that queued tasks do not load the cluster.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time

import httpx
import schemathesis
from PIL import Image

from tests.e2e.conftest import KEY_A
from tests.support.service import ROOT

_APPS_ENV = "STUDIO_OPENAPI_TEST_APPS"
_API_ENV = "STUDIO_OPENAPI_TEST_API"
_LOG_ENV = "STUDIO_OPENAPI_TEST_LOG"
GENERATION = ("getTextToImage", "getImageToImage", "getImagetoImage")
#: Options whose allowed values the loaded model decides (``ingress.model_checks``).
MODEL_OPTIONS = ("scheduler", "use_karras_sigmas", "algorithm_type", "clip_skip", "lora_model", "lora_strength",
                 "vae")


def test_the_service_conforms_to_its_openapi_document(service, tmp_path):
    apps = httpx.get(f"{service.api}/apps", headers={"Authorization": f"Bearer {KEY_A}"}).json()["apps"]
    calls = tmp_path / "calls.log"
    env = {**os.environ, _APPS_ENV: json.dumps(apps), _API_ENV: service.api, _LOG_ENV: str(calls),
           "SCHEMATHESIS_HOOKS": __file__, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{service.base}/openapi.json",
        "--checks", "all",
        "--header", f"Authorization: Bearer {KEY_A}",
        "--max-examples", os.environ.get("STUDIO_OPENAPI_MAX_EXAMPLES", "15"),
        "--seed", os.environ.get("STUDIO_OPENAPI_SEED", "20240601"),
        "--workers", "1",
        "--request-timeout", "120",
        # Real (tiny) models on a busy 2-core box: a 1024 px face avatar can pass schemathesis's default 10 s.
        "--max-response-time", "60",
        "--output-truncate", "false",
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    report = proc.stdout[-40000:] + proc.stderr[-4000:]
    print(f"schemathesis: {time.monotonic() - started:.0f} s\n{proc.stdout[-3000:]}")
    assert proc.returncode == 0, report
    # The narrowing left real work to check: every generation route ran jobs that succeeded.
    succeeded = {line.split()[0] for line in calls.read_text().splitlines() if line.endswith(" 200")}
    assert succeeded >= set(GENERATION), succeeded


# -- hooks of the schemathesis process ------------------------------------------------


def _png_data_uri(size: int = 256) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 140, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _min_side(rng: dict) -> int:
    return -(-int(rng["min"]) // 64) * 64


def tame(body: dict, apps: dict[str, dict], png: str, face: str = "") -> None:
    """Narrow a schema-valid generation body as the module docstring says (it stays schema-valid)."""
    app = apps.get(body.get("app_id"))
    for field in ("image", "mask_url"):
        if body.get(field):
            body[field] = face if face and field == "image" and app and app["task"] in ("face", "avatar") else png
    for field in ("webhook", *MODEL_OPTIONS):
        body.pop(field, None)
    if app is None:
        return
    body["batch"] = 1
    body["num_inference_steps"] = 2
    if not app["inputs"] or body.get("height") is not None or body.get("width") is not None:
        body["height"] = _min_side(app["limits"]["height"])
        body["width"] = _min_side(app["limits"]["width"])
    if app["strength"] is not None and body.get("strength") is not None:
        body["strength"] = max(body["strength"], 0.5)


CHAT = ("chat", "streamChat")


def tame_other(route: str, body: dict, pdf: str) -> None:
    """Narrow a schema-valid body of the chat, document and speech routes (see the module docstring)."""
    if route in CHAT:
        body.clear()
        body.update({"llm": "Local", "history": [{"role": "user", "content": "hello"}], "max_tokens": 4})
    elif route == "pdfVectorStore":
        body["url"] = pdf
    elif route == "getTextToSpeech":
        body.pop("webhook", None)  # as on the image routes: it needs the tenant's secret and a public host
        if isinstance(body.get("audio_parameters"), dict):
            body["audio_parameters"].pop("voice_id", None)


def _face_data_uri() -> str:
    """A picture with a face the tiny face detector finds (face apps answer NoFaceDetected otherwise)."""
    from deployments.pipelines.tiny_faces import draw_faces

    buf = io.BytesIO()
    draw_faces((512, 512), [(256, 240, 120)]).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _pdf_data_uri() -> str:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "A short page for the conformance run. " * 4)
    return "data:application/pdf;base64," + base64.b64encode(bytes(pdf.output())).decode()


if os.environ.get(_APPS_ENV):
    _APPS = {a["app_id"]: a for a in json.loads(os.environ[_APPS_ENV])}
    _API = os.environ[_API_ENV]
    _PNG = _png_data_uri()
    _PDF = _pdf_data_uri()
    _FACE = _face_data_uri()

    @schemathesis.hook
    def before_call(context, case, kwargs):  # noqa: ARG001
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        route = case.path.rsplit("/", 1)[-1]
        if positive and isinstance(case.body, dict) and route in GENERATION:
            tame(case.body, _APPS, _PNG, _FACE)
        if positive and isinstance(case.body, dict):
            tame_other(route, case.body, _PDF)

    @schemathesis.hook
    def after_call(context, case, response):  # noqa: ARG001
        route = case.path.rsplit("/", 1)[-1]
        with open(os.environ[_LOG_ENV], "a") as log:
            log.write(f"{route} {response.status_code}\n")
        if response.status_code != 200 or route not in (*GENERATION, "getTextToSpeech"):
            return
        env = response.json()
        if env.get("status") == "PENDING" and env.get("task_id"):
            httpx.post(f"{_API}/cancelTask", json={"id": env["task_id"]},
                       headers={"Authorization": f"Bearer {KEY_A}"}, timeout=30)
