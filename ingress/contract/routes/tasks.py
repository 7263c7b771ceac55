"""The task routes: status by id (``GET status/{task_id}``), by id or ``refID``
(``POST getImage``), and cancellation (``POST cancelTask``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from ingress.contract.auth import Tenant
from ingress.contract.envelopes import envelope_response
from ingress.contract.errors import NotFound
from ingress.contract.routes.context import BodyReader, Studio
from ingress.contract.routes.docs import model_body, responses
from ingress.contract.schemas.envelope import Envelope
from ingress.contract.schemas.tasks import TASK_ID_PATTERN, CancelRequest, StatusRequest
from ingress.contract.validation import parse
from ingress.tasks.service import TaskService

TaskId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=TASK_ID_PATTERN, description="The task_id returned at submit.")
]


def router(studio: Studio, read_body: BodyReader) -> APIRouter:
    api = APIRouter(tags=["tasks"])
    cap = studio.settings.max_body_bytes
    with_body = responses(studio.settings, 401, 404, 408, 413, 422, 500, 503, body_bytes=cap)

    def task_service() -> TaskService:
        if studio.tasks is None:
            raise NotFound("async tasks are not enabled on this deployment")
        return studio.tasks

    @api.post("/getImage", response_model=Envelope, responses=with_body, openapi_extra=model_body(StatusRequest),
              summary="Task status (by id, or by refID)")
    async def get_image(request: Request, tenant: Tenant):
        req = parse(StatusRequest, await read_body(request, cap))
        return envelope_response(await task_service().status(tenant, req.id, req.refID))

    @api.get("/status/{task_id}", response_model=Envelope, summary="Task status",
             responses=responses(studio.settings, 401, 404, 422, 500))
    async def get_status(task_id: TaskId, tenant: Tenant):
        return envelope_response(await task_service().status(tenant, task_id))

    @api.post("/cancelTask", response_model=Envelope, responses=with_body, openapi_extra=model_body(CancelRequest),
              summary="Cancel a task: queued never runs, running stops at the next step")
    async def cancel_task(request: Request, tenant: Tenant):
        req = parse(CancelRequest, await read_body(request, cap))
        return envelope_response(await task_service().cancel(tenant, req.id))

    return api
