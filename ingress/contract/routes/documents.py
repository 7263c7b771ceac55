"""The document store's routes: ``pdfVectorStore`` (index a PDF), ``getDocument`` and
``deleteDocument``. A document belongs to the tenant that stored it; another tenant's id
answers exactly as an unknown one does (404)."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request

from ingress.contract.auth import Tenant
from ingress.contract.envelopes import envelope_response
from ingress.contract.errors import InputFetchError, NotFound, ValidationFailed
from ingress.contract.routes.context import BodyReader, Studio
from ingress.contract.routes.docs import model_body, responses
from ingress.contract.routes.parsing import parse_strict
from ingress.contract.schemas.documents import DocumentRef, PdfVectorStoreRequest
from ingress.contract.schemas.envelope import Envelope
from ingress.dispatch import service_call
from ingress.inputs import FetchLimits
from ingress.inputs.fetch import fetch_url
from ingress.jobs import redact_url

PDF_MAGIC = b"%PDF-"
_DATA_PREFIX = "data:application/pdf;base64,"


async def load_pdf(url: str, limits: FetchLimits) -> bytes:
    """The PDF behind ``url`` (http(s) under the input rules, or a ``data:application/pdf;base64,`` URI),
    at most ``limits.max_bytes``; a 422 naming ``url`` when it is not a PDF."""
    if url[:len(_DATA_PREFIX)].lower() == _DATA_PREFIX:
        payload = url[len(_DATA_PREFIX):]
        if len(payload) > limits.max_bytes * 4 // 3 + 4:
            raise InputFetchError("url", f"the PDF is larger than {limits.max_bytes} bytes")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InputFetchError("url", "the data: URI is not valid base64") from None
    elif url.lower().startswith(("http://", "https://")):
        data = await fetch_url(url, "url", limits)
    else:
        raise ValidationFailed("url: allowed: an http(s) URL of a PDF, or a data:application/pdf;base64, URI")
    if not data.startswith(PDF_MAGIC):
        raise InputFetchError("url", "the document is not a PDF (it does not start with %PDF-)")
    return data


def router(studio: Studio, read_body: BodyReader) -> APIRouter:
    api = APIRouter(tags=["documents"])
    settings = studio.settings

    def store_config():
        docs = studio.registry.config.documents
        if docs is None or studio.documents is None:
            raise NotFound("the document store is not enabled on this deployment")
        return docs

    @api.post("/pdfVectorStore", summary="Store File in Vector Database", response_model=Envelope,
              responses=responses(settings, 401, 404, 408, 413, 422, 429, 500, 503, 504, body_bytes=settings.max_body_bytes),
              openapi_extra=model_body(PdfVectorStoreRequest))
    async def pdf_vector_store(request: Request, tenant: Tenant):
        started = time.perf_counter()
        req = parse_strict(PdfVectorStoreRequest, await read_body(request, settings.max_body_bytes))
        docs = store_config()
        limits = FetchLimits(max_bytes=docs.limits.max_bytes, timeout_seconds=settings.fetch_timeout_seconds,
                             allow_loopback=settings.allow_loopback_inputs)
        data = await load_pdf(req.url, limits)
        stored = await service_call(studio.documents.store.remote(tenant, data), "documents",
                                    docs.limits.parse_seconds + settings.sync_timeout_seconds,
                                    settings.retry_after_seconds)
        env = Envelope(
            time_required=round(time.perf_counter() - started, 4),
            input={"url": redact_url(req.url) if not req.url.startswith("data:") else "data:application/pdf;base64,..."},
            output={"id": stored["id"], "chunks": stored["chunks"]},
            task_id=uuid.uuid4().hex, status="SUCCESS",
            meta={"pages": stored.get("pages"), "characters": stored.get("characters")},
        )
        return envelope_response(env)

    async def document(tenant: str, document_id: str) -> dict[str, Any]:
        store_config()
        found = await service_call(studio.documents.get.remote(tenant, document_id), "documents",
                                   settings.sync_timeout_seconds, settings.retry_after_seconds)
        if found is None:
            raise NotFound("no such document")
        return found

    @api.post("/getDocument", summary="A stored document's id, chunks and pages", response_model=Envelope,
              responses=responses(settings, 401, 404, 422, 500, 503), openapi_extra=model_body(DocumentRef))
    async def get_document(request: Request, tenant: Tenant):
        req = parse_strict(DocumentRef, await read_body(request, settings.max_body_bytes))
        found = await document(tenant, req.id)
        return envelope_response(Envelope(input={"id": req.id}, output=found, status="SUCCESS"))

    @api.post("/deleteDocument", summary="Delete a stored document and its vectors", response_model=Envelope,
              responses=responses(settings, 401, 404, 422, 500, 503), openapi_extra=model_body(DocumentRef))
    async def delete_document(request: Request, tenant: Tenant):
        req = parse_strict(DocumentRef, await read_body(request, settings.max_body_bytes))
        store_config()
        deleted = await service_call(studio.documents.delete.remote(tenant, req.id), "documents",
                                     settings.sync_timeout_seconds, settings.retry_after_seconds)
        if not deleted:
            raise NotFound("no such document")
        return envelope_response(Envelope(input={"id": req.id}, output={"id": req.id, "deleted": True},
                                          status="SUCCESS"))

    return api
