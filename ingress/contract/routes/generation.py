"""The generation routes (images, and Text To Speech's audio): authenticate → read and validate the body → app rules →
run synchronously (dispatch) or store an async task (``celery: true``) → envelope."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid

from fastapi import APIRouter, Request

from deployments.catalog import TASKS, deployment_name
from deployments.metrics import STUDIO_METRICS
from deployments.types import ImageJob, Result
from ingress.contract.auth import Tenant
from ingress.contract.envelopes import envelope_response
from ingress.contract.errors import ValidationFailed
from ingress.contract.metrics import label_request
from ingress.contract.routes.context import BodyReader, Studio
from ingress.contract.routes.docs import generation_body, json_body, responses, speech_body
from ingress.contract.routes.parsing import parse_strict
from ingress.contract.schemas.chat import parse_request
from ingress.contract.schemas.envelope import Envelope, output_meta
from ingress.contract.schemas.generation import (
    MAX_PROMPT_CHARS,
    GenerationRequest,
    ImageToImageRequest,
    TextToImageRequest,
)
from ingress.contract.schemas.speech import TextToSpeechRequest
from ingress.contract.validation import check_for_app, check_speech_app
from ingress.dispatch import service_call
from ingress.jobs import build_job, output_bytes_bound, redact
from ingress.model_checks import check_job
from ingress.tasks.service import body_digest
from ingress.tasks.webhooks import check_webhook_destination
from storage.tasks import new_task_id

log = logging.getLogger(__name__)

_SYNC_HEADER = {
    "X-Studio-Deployment": {
        "description": "Synchronous calls: the family deployment that ran the job, e.g. `sd15-a100`.",
        "schema": {"type": "string"},
    },
    "X-Studio-Replica": {
        "description": "Synchronous calls: the replica of that deployment that ran the job.",
        "schema": {"type": "string"},
    },
    "X-Studio-Lora-Stack": {
        "description": "Synchronous calls with `lora_model`: `loaded` (the replica loaded the stack for this call) "
        "or `warm` (it already held it).",
        "schema": {"type": "string", "enum": ["loaded", "warm"]},
    },
}
#: ``Result.served_by`` keys → response headers.
_SERVED_BY = {"replica": "X-Studio-Replica", "lora_stack": "X-Studio-Lora-Stack"}


def router(studio: Studio, read_body: BodyReader) -> APIRouter:
    """``getTextToImage``, ``getImageToImage`` and its alias ``getImagetoImage``, ``getTextToSpeech``."""
    api = APIRouter(tags=["generation"])
    limits = studio.fetch_limits
    settings = studio.settings

    def body_cap(model: type[GenerationRequest] | type[TextToSpeechRequest]) -> int:
        """Routes that take inline images accept bodies up to ``max_image_body_bytes``."""
        return settings.max_image_body_bytes if issubclass(model, ImageToImageRequest) else settings.max_body_bytes

    async def generate(route: str, model: type[GenerationRequest] | type[TextToSpeechRequest], request: Request,
                       tenant: str):
        started = time.perf_counter()
        body = await read_body(request, body_cap(model))
        req = parse_request(model, body) if model is TextToSpeechRequest else parse_strict(model, body)
        if (known := studio.registry.app(req.app_id)) is not None:  # its refusals count against the app too
            label_request(request, app_id=known.app_id, family=known.family, tenant=tenant)
        check = check_speech_app if model is TextToSpeechRequest else check_for_app
        app, gpu = check(route, req, studio.registry)
        label_request(request, gpu=gpu)
        if req.celery:
            return envelope_response(await submit(route, app, gpu, req, tenant, request))
        if studio.admission is not None:
            await studio.admission.check(tenant, {"images": getattr(req, "batch", 1)})
        request_id = uuid.uuid4().hex
        label_request(request, studio_task_id=request_id, family_deployment=deployment_name(app.family, gpu))
        family = studio.registry.config.families[app.family]
        async with studio.images() as images:  # decoded inputs count against the replica's budget until the end
            job = await build_job(app, req, tenant, request_id, images, family)
            check_inline(job)
            await check_for_model(app, gpu, job, wait=False)  # the family checks too; never wait here
            await enhance(req, job)
            result = await studio.dispatcher.run(app.family, gpu, job, settings.sync_timeout_seconds)
        urls, expires_at = await _outputs(studio, result, settings.max_inline_bytes)
        # Text To Speech: one audio file's URL; images: a list, one per image.
        output: str | list[str] = urls[0] if TASKS[app.task].output == "audio" else urls
        STUDIO_METRICS.images(getattr(request.state, "studio_metric_labels", {}), len(result.outputs))
        env = Envelope(
            time_required=round(time.perf_counter() - started, 4),
            input=redact(req),
            output=output,
            app_id=app.app_id,
            task_id=request_id,
            status="SUCCESS",
            meta=output_meta(result.meta, expires_at),
        )
        headers = {"X-Studio-Deployment": deployment_name(app.family, gpu)}
        headers.update({_SERVED_BY[k]: v for k, v in result.served_by.items() if k in _SERVED_BY})
        return envelope_response(env, headers=headers)

    def check_inline(job) -> None:
        """``base64: true``: the outputs' largest possible size must fit ``max_inline_bytes``; known
        here, before the job runs."""
        if not getattr(job, "return_bytes", False):
            return
        bound = output_bytes_bound(job)
        cap = settings.max_inline_bytes
        if bound is not None and bound > cap:
            raise ValidationFailed(f"base64: these outputs could take up to {bound} bytes inline; allowed: at most "
                                   f"{cap} bytes; send base64: false to get URLs")

    async def check_for_model(app, gpu: str, job, wait: bool) -> None:
        if not isinstance(job, ImageJob):
            return  # the model-dependent checks are the diffusion families' (others check all at the ingress)
        facts = None
        if studio.facts is not None:
            facts = await studio.facts.get(deployment_name(app.family, gpu), wait=wait)
        check_job(job, facts)

    async def enhance(req, job) -> None:
        """``enhance_prompt``: the chat model configured for it rewrites ``job.prompt`` (before an async
        task is stored, so the task runs with the rewrite)."""
        if not getattr(req, "enhance_prompt", None):
            return
        chat = studio.registry.config.chat
        rules = chat.enhance_prompt if chat is not None else None
        if rules is None or studio.chat is None:
            raise ValidationFailed("enhance_prompt: no prompt model is configured on this deployment; send false")
        reply = await service_call(
            studio.chat.enhance.remote(rules.llm, rules.llm_model, rules.system, job.prompt, rules.max_tokens,
                                       rules.temperature),
            "chat", rules.timeout_seconds, settings.retry_after_seconds)
        job.original_prompt = job.prompt
        job.prompt = reply.text[:MAX_PROMPT_CHARS]

    async def submit(route, app, gpu, req, tenant, request: Request) -> Envelope:
        """Check everything a synchronous call checks, capture the inputs, store the task."""
        if studio.tasks is None:
            raise ValidationFailed("celery: async tasks are not enabled on this deployment; send celery: false")
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= 255:
            raise ValidationFailed("Idempotency-Key: allowed: 1..255 characters")
        digest = None
        if key is not None:  # only a keyed submit is compared with an earlier one
            digest = await asyncio.to_thread(body_digest, req.model_dump(mode="json", exclude_none=True))
            if (replay := await studio.tasks.replay(tenant, key, digest)) is not None:
                return replay
        if req.webhook:
            if not await studio.has_webhook_secret(tenant):
                raise ValidationFailed("webhook: no webhook signing secret is configured for your tenant")
            await check_webhook_destination(req.webhook, limits)
        if studio.admission is not None:  # before any input is fetched (a refusal costs nothing)
            await studio.admission.check(tenant, {"images": getattr(req, "batch", 1)}, task=True)
        async with studio.images() as images:
            job = await build_job(app, req, tenant, "pending", images, studio.registry.config.families[app.family])
            await check_for_model(app, gpu, job, wait=True)
            await enhance(req, job)
            job.request_id = new_task_id()  # after the inputs: a task's deadline counts from its id
            label_request(request, studio_task_id=job.request_id, family_deployment=deployment_name(app.family, gpu))
            return await studio.tasks.submit(route, app, gpu, req, job, redact(req), tenant, key, digest)

    def doc(route: str, model: type[GenerationRequest] | type[TextToSpeechRequest]) -> dict:
        apps = [a for a in studio.registry.config.apps if TASKS[a.task].route == route]
        if model is TextToSpeechRequest:
            body = json_body(speech_body(model, apps, async_tasks=studio.tasks is not None))
        else:
            chat = studio.registry.config.chat
            enhance = studio.chat is not None and chat is not None and chat.enhance_prompt is not None
            body = json_body(generation_body(model, apps, async_tasks=studio.tasks is not None, enhance=enhance))
        return {
            "response_model": Envelope,
            "responses": {
                200: {"description": "`SUCCESS` with `output` (synchronous), or `PENDING` with `task_id`"
                      " (`celery: true`).", "headers": _SYNC_HEADER},
                **responses(settings, 401, 408, 413, 422, 429, 500, 503, 504, body_bytes=body_cap(model)),
            },
            "openapi_extra": body,
        }

    @api.post("/getTextToImage", summary="Text To Image", **doc("getTextToImage", TextToImageRequest))
    async def get_text_to_image(request: Request, tenant: Tenant):
        return await generate("getTextToImage", TextToImageRequest, request, tenant)

    i2i = doc("getImageToImage", ImageToImageRequest)

    @api.post("/getImageToImage", summary="Image To Image, Inpainting, ControlNet, Illusion, Variation", **i2i)
    async def get_image_to_image(request: Request, tenant: Tenant):
        return await generate("getImageToImage", ImageToImageRequest, request, tenant)

    @api.post("/getImagetoImage", summary="Alias of getImageToImage", **i2i)
    async def get_image_to_image_alias(request: Request, tenant: Tenant):
        return await generate("getImageToImage", ImageToImageRequest, request, tenant)

    @api.post("/getTextToSpeech", summary="Text To Speech", **doc("getTextToSpeech", TextToSpeechRequest))
    async def get_text_to_speech(request: Request, tenant: Tenant):
        return await generate("getTextToSpeech", TextToSpeechRequest, request, tenant)

    return api


async def _outputs(studio: Studio, result: Result, max_inline_bytes: int) -> tuple[list[str], float | None]:
    """Output URLs that expire, or inline data: URIs when the job asked for bytes (and they fit the cap,
    checked before the job ran and again here: past it, URLs)."""
    inline = [(o.content_type, o.data) for o in result.outputs if o.data is not None]
    if len(inline) == len(result.outputs) and sum(len(data) for _, data in inline) <= max_inline_bytes:
        return [f"data:{kind};base64,{base64.b64encode(data).decode()}" for kind, data in inline], None
    expiry = studio.url_expiry_seconds
    urls = await asyncio.to_thread(lambda: [studio.store.url(o.key, expiry) for o in result.outputs])
    return urls, time.time() + expiry
