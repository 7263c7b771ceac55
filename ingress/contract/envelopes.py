"""Writing the envelope, for results and for every error (mapped once, here)."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingress.contract.errors import StudioError
from ingress.contract.metrics import label_error
from ingress.contract.schemas.envelope import Envelope

log = logging.getLogger(__name__)


def envelope_response(env: Envelope, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(env.model_dump(mode="json"), status_code=status_code, headers=headers)


def error_response(error_type: str, message: str, status_code: int, headers: dict[str, str] | None = None):
    env = Envelope(error=error_type, error_data=message, status="FAILURE")
    return envelope_response(env, status_code, headers)


def install_handlers(api: FastAPI) -> None:
    """Route every error through the envelope; never leak a traceback."""

    @api.exception_handler(StudioError)
    async def _studio(request: Request, exc: StudioError):
        label_error(request, exc.error_type)
        return error_response(exc.error_type, exc.message, exc.status_code, exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        label_error(request, "ValidationError")
        fields = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in exc.errors())
        return error_response("ValidationError", fields, 422)

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return error_response(kind, str(exc.detail), exc.status_code, getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        label_error(request, "InternalError")
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled error (incident %s)", incident)
        return error_response("InternalError", f"an internal error occurred (incident {incident})", 500)
