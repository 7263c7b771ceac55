"""The FastAPI application of the public contract, assembled from the routers of
:mod:`ingress.contract.routes`.

Route handlers stay thin: authenticate (the :data:`~ingress.contract.auth.Tenant`
dependency, before any body is read) → validate → registry → dispatch → envelope.
Errors are written by the handlers in :mod:`ingress.contract.envelopes`.
"""

from __future__ import annotations

from fastapi import FastAPI

from ingress.contract.envelopes import install_handlers
from ingress.contract.limits import TenantGate
from ingress.contract.metrics import RequestMetrics
from ingress.contract.routes import apps, chat, documents, files, generation, health, tasks
from ingress.contract.routes.context import BodyReader, Studio

__all__ = ["PREFIX", "Studio", "create_api"]

PREFIX = "/api/v1/studio"

_DESCRIPTION = """\
The studio on Ray Serve: text to image, image to image, inpainting, ControlNet, Illusion
Diffusion, image variation, faces, backgrounds, upscaling, text to speech, a chatbot with
document and web search, and a PDF vector store.

Every route but `files` and `get-status` needs `Authorization: Bearer <api key>`. Every answer but a
file is the JSON envelope (`time_required`, `error`, `error_data`, `input`, `output`,
`app_id`, `task_id`, `status`, `meta`, ...); an error sets `error` to its type and
`error_data` to what was refused and why. `app_id` lists the apps of this deployment
(`GET apps`); each app's limits, GPU types and inputs are a branch of the request schema.
"""


def create_api(studio: Studio) -> FastAPI:
    """Build the FastAPI app around one ``Studio``."""
    api = FastAPI(title="Studio generation API", version="1", description=_DESCRIPTION)
    api.state.keys = studio.keys  # read by ingress.contract.auth.tenant_of_request
    install_handlers(api)
    # Added first, so inside the metrics: a tenant's 429 is counted like any other answer.
    api.add_middleware(TenantGate, prefix=PREFIX, keys=studio.keys, settings=studio.settings,
                       admission=studio.admission)
    api.add_middleware(RequestMetrics, prefix=PREFIX)
    read_body = BodyReader(studio.settings)
    api.include_router(generation.router(studio, read_body), prefix=PREFIX)
    api.include_router(tasks.router(studio, read_body), prefix=PREFIX)
    api.include_router(chat.router(studio, read_body), prefix=PREFIX)
    api.include_router(documents.router(studio, read_body), prefix=PREFIX)
    api.include_router(apps.router(studio), prefix=PREFIX)
    api.include_router(files.router(studio), prefix=PREFIX)
    api.include_router(health.router(studio), prefix=PREFIX)
    return api
