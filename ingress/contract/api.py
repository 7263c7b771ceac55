"""The FastAPI application of the public contract.

Route handlers stay thin: authenticate → validate → registry → dispatch →
envelope. Errors are written by the handlers in :mod:`ingress.contract.envelopes`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import Response

from deployments.catalog import deployment_name
from deployments.types import Result
from ingress.contract.auth import KeyRing
from ingress.contract.body import BodyBudget, read_json
from ingress.contract.envelopes import envelope_response, install_handlers
from ingress.contract.errors import NotFound, ValidationFailed
from ingress.contract.schemas.envelope import Envelope, output_meta
from ingress.contract.schemas.generation import (
    GenerationRequest,
    ImageToImageRequest,
    TextToImageRequest,
)
from ingress.contract.schemas.tasks import CancelRequest, StatusRequest
from ingress.contract.validation import check_for_app, parse
from ingress.dispatch import Dispatcher
from ingress.inputs import FetchLimits
from ingress.jobs import build_job, redact
from ingress.model_checks import ModelFacts, check_job
from ingress.tasks.service import TaskService, body_digest
from ingress.tasks.webhooks import check_webhook_destination
from ingress.wiring.registry import Registry
from ingress.wiring.settings import IngressSettings
from storage.base import ObjectNotFound, ObjectStore
from storage.tasks import new_task_id

log = logging.getLogger(__name__)

PREFIX = "/api/v1/studio"


@dataclass
class Studio:
    """Everything a request needs; built once per ingress replica."""

    registry: Registry
    keys: KeyRing
    dispatcher: Dispatcher
    store: ObjectStore
    settings: IngressSettings
    url_expiry_seconds: int
    tasks: TaskService | None = None  # None: async tasks are off (e.g. the in-process benchmark)
    facts: ModelFacts | None = None  # None: the model-dependent checks are left to the family

    @property
    def fetch_limits(self) -> FetchLimits:
        s = self.settings
        return FetchLimits(
            max_bytes=s.fetch_max_bytes, timeout_seconds=s.fetch_timeout_seconds, allow_loopback=s.allow_loopback_inputs
        )


def _body_doc(model: type) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def create_api(studio: Studio) -> FastAPI:
    """Build the FastAPI app around one ``Studio``."""
    api = FastAPI(
        title="Studio generation API",
        version="1",
        description="Text to image, image to image and inpainting on Ray Serve. Auth: `Authorization: Bearer <key>`.",
    )
    install_handlers(api)
    limits = studio.fetch_limits
    budget = BodyBudget(studio.settings.max_buffered_body_bytes, studio.settings.retry_after_seconds)

    async def body(request: Request, max_bytes: int):
        return await read_json(request, max_bytes, timeout_seconds=studio.settings.body_read_seconds, budget=budget)

    def body_cap(model: type) -> int:
        """Routes that take inline images accept bodies up to ``max_image_body_bytes``."""
        s = studio.settings
        return s.max_image_body_bytes if issubclass(model, ImageToImageRequest) else s.max_body_bytes

    async def generate(route: str, model: type[GenerationRequest], request: Request, authorization: str | None):
        started = time.perf_counter()
        tenant = studio.keys.tenant(authorization)
        req = parse(model, await body(request, body_cap(model)))
        app, gpu = check_for_app(route, req, studio.registry)
        if req.celery:
            return envelope_response(await submit(route, app, gpu, req, tenant, request))
        request_id = uuid.uuid4().hex
        job = await build_job(app, req, tenant, request_id, limits)
        await check_for_model(app, gpu, job, wait=False)  # the family checks too; never wait here
        result = await studio.dispatcher.run(app.family, gpu, job, studio.settings.sync_timeout_seconds)
        output, expires_at = await _outputs(studio, result)
        env = Envelope(
            time_required=round(time.perf_counter() - started, 4),
            input=redact(req),
            output=output,
            app_id=app.app_id,
            task_id=request_id,
            status="SUCCESS",
            meta=output_meta(result.meta, expires_at),
        )
        log.info(
            "generated",
            extra={"app_id": app.app_id, "gpu": gpu, "tenant": tenant, "outputs": len(result.outputs),
                   "seconds": env.time_required},
        )
        return envelope_response(env, headers={"X-Studio-Deployment": f"{app.family}-{gpu}"})

    async def check_for_model(app, gpu: str, job, wait: bool) -> None:
        facts = None
        if studio.facts is not None:
            facts = await studio.facts.get(deployment_name(app.family, gpu), wait=wait)
        check_job(job, facts)

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
            if not studio.settings.has_webhook_secret(tenant):
                raise ValidationFailed("webhook: no webhook signing secret is configured for your tenant")
            await check_webhook_destination(req.webhook, limits)
        job = await build_job(app, req, tenant, "pending", limits)
        await check_for_model(app, gpu, job, wait=True)
        job.request_id = new_task_id()  # after the inputs: a task's deadline counts from its id
        return await studio.tasks.submit(route, app, gpu, req, job, redact(req), tenant, key, digest)

    def task_service() -> TaskService:
        if studio.tasks is None:
            raise NotFound("async tasks are not enabled on this deployment")
        return studio.tasks

    @api.post(f"{PREFIX}/getImage", response_model=Envelope, openapi_extra=_body_doc(StatusRequest),
              summary="Task status (by id, or by refID)")
    async def get_image(request: Request, authorization: str | None = Header(None)):
        tenant = studio.keys.tenant(authorization)
        req = parse(StatusRequest, await body(request, studio.settings.max_body_bytes))
        return envelope_response(await task_service().status(tenant, req.id, req.refID))

    @api.get(f"{PREFIX}/status/{{task_id}}", response_model=Envelope, summary="Task status")
    async def get_status(task_id: str, authorization: str | None = Header(None)):
        tenant = studio.keys.tenant(authorization)
        return envelope_response(await task_service().status(tenant, task_id))

    @api.post(f"{PREFIX}/cancelTask", response_model=Envelope, openapi_extra=_body_doc(CancelRequest),
              summary="Cancel a task: queued never runs, running stops at the next step")
    async def cancel_task(request: Request, authorization: str | None = Header(None)):
        tenant = studio.keys.tenant(authorization)
        req = parse(CancelRequest, await body(request, studio.settings.max_body_bytes))
        return envelope_response(await task_service().cancel(tenant, req.id))

    @api.post(f"{PREFIX}/getTextToImage", response_model=Envelope, openapi_extra=_body_doc(TextToImageRequest),
              summary="Text To Image")
    async def get_text_to_image(request: Request, authorization: str | None = Header(None)):
        return await generate("getTextToImage", TextToImageRequest, request, authorization)

    @api.post(f"{PREFIX}/getImageToImage", response_model=Envelope, openapi_extra=_body_doc(ImageToImageRequest),
              summary="Image To Image and Inpainting")
    async def get_image_to_image(request: Request, authorization: str | None = Header(None)):
        return await generate("getImageToImage", ImageToImageRequest, request, authorization)

    @api.post(f"{PREFIX}/getImagetoImage", response_model=Envelope, openapi_extra=_body_doc(ImageToImageRequest),
              summary="Alias of getImageToImage", include_in_schema=True)
    async def get_image_to_image_alias(request: Request, authorization: str | None = Header(None)):
        return await generate("getImageToImage", ImageToImageRequest, request, authorization)

    @api.get(f"{PREFIX}/apps", summary="The app registry")
    async def list_apps(authorization: str | None = Header(None)):
        studio.keys.tenant(authorization)
        return {"apps": studio.registry.public()}

    @api.get(f"{PREFIX}/files/{{key:path}}", summary="Download a generated file (signed URL, local store only)")
    async def get_file(key: str, expires: int = 0, signature: str = ""):
        verify = getattr(studio.store, "verify", None)
        if verify is None or not verify(key, expires, signature):
            raise NotFound("no such file, or the link has expired")
        try:
            data = await asyncio.to_thread(studio.store.get, key)
            content_type = await asyncio.to_thread(studio.store.content_type, key)
        except (ObjectNotFound, ValueError):
            raise NotFound("no such file, or the link has expired") from None
        return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=300"})

    return api


async def _outputs(studio: Studio, result: Result) -> tuple[list[str], float | None]:
    """Output URLs that expire, or inline data: URIs when the job asked for bytes."""
    if all(o.data is not None for o in result.outputs):
        return [f"data:{o.content_type};base64,{base64.b64encode(o.data).decode()}" for o in result.outputs], None
    expiry = studio.url_expiry_seconds
    urls = await asyncio.to_thread(lambda: [studio.store.url(o.key, expiry) for o in result.outputs])
    return urls, time.time() + expiry
