"""The document store's routes: ``pdfVectorStore`` (index a PDF), ``listDocuments``,
``getDocument`` and ``deleteDocument``. A document belongs to the tenant that stored it; another
tenant's id answers exactly as an unknown one does: ``getDocument`` 404, ``deleteDocument`` 200
with ``deleted: false`` (deleting is idempotent: an unknown, expired or already-deleted id is not
an error, and the answer says whether this call removed something). Caps, retention and the
listing's cursor are the document store's (``deployments.documents.service``)."""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request

from deployments.documents.rules import name_from_url
from ingress.contract.auth import Tenant
from ingress.contract.envelopes import envelope_response
from ingress.contract.errors import InputFetchError, NotFound, ValidationFailed
from ingress.contract.metrics import label_request
from ingress.contract.routes.context import BodyReader, Studio
from ingress.contract.routes.docs import model_body, responses
from ingress.contract.routes.parsing import parse_strict
from ingress.contract.schemas.documents import (
    DeletedDocument,
    DocumentPage,
    DocumentRef,
    ListDocumentsRequest,
    PdfVectorStoreRequest,
    StoredDocument,
)
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

    async def call(response: Any, timeout: float | None = None) -> Any:
        return await service_call(response, "documents", timeout or settings.sync_timeout_seconds,
                                  settings.retry_after_seconds)

    @api.post("/pdfVectorStore", summary="Store File in Vector Database", response_model=Envelope,
              description="Index a PDF for the caller's tenant: `output` is `{id, chunks}`, `meta` holds `pages`, "
              "`characters`, `name` and `size`. Refused (422 naming the cap) when the tenant holds its maximum of "
              "documents or text chunks (`listDocuments` shows the usage); documents expire after the retention.",
              responses=responses(settings, 401, 404, 408, 413, 422, 429, 500, 503, 504, body_bytes=settings.max_body_bytes),
              openapi_extra=model_body(PdfVectorStoreRequest))
    async def pdf_vector_store(request: Request, tenant: Tenant):
        started = time.perf_counter()
        req = parse_strict(PdfVectorStoreRequest, await read_body(request, settings.max_body_bytes))
        docs = store_config()
        request_id = uuid.uuid4().hex
        label_request(request, studio_task_id=request_id, family_deployment="documents")
        # The tenant's pages per minute (TenantGate counted the request itself): a PDF's pages are known only
        # once it is parsed, so one page is admitted before the fetch and the rest settled after the store.
        # The store's own caps (documents, chunks) are checked in the store.
        if studio.admission is not None:
            await studio.admission.check(tenant, {"document_pages": 1})
        pages = 0
        try:
            limits = FetchLimits(max_bytes=docs.limits.max_bytes, timeout_seconds=settings.fetch_timeout_seconds,
                                 allow_loopback=settings.allow_loopback_inputs)
            data = await load_pdf(req.url, limits)
            name = req.name or name_from_url(req.url)
            stored = await call(studio.documents.store.remote(tenant, data, name),
                                docs.limits.parse_seconds + settings.sync_timeout_seconds)
            pages = int(stored.get("pages") or 0)
        finally:
            if studio.admission is not None:
                studio.admission.settle(tenant, "document_pages", pages - 1)
        url = redact_url(req.url) if not req.url.startswith("data:") else "data:application/pdf;base64,..."
        env = Envelope(
            time_required=round(time.perf_counter() - started, 4),
            input={"url": url, "name": req.name},
            output={"id": stored["id"], "chunks": stored["chunks"]},
            task_id=request_id, status="SUCCESS",
            meta={"pages": stored.get("pages"), "characters": stored.get("characters"), "name": stored.get("name"),
                  "size": stored.get("size")},
        )
        return envelope_response(env)

    @api.post("/listDocuments", summary="The tenant's stored documents, a page at a time", response_model=Envelope,
              description="`output` is `{documents: [{id, name, size, chunks, pages, created}], next_cursor, usage}`: "
              "pass `next_cursor` back as `cursor` for the next page (null: the last page). Only the caller's "
              "tenant's documents, never an expired one; `usage` is what the tenant holds against its caps.",
              responses=responses(settings, 401, 404, 422, 500, 503), openapi_extra=model_body(ListDocumentsRequest, required=False))
    async def list_documents(request: Request, tenant: Tenant):
        req = parse_strict(ListDocumentsRequest, await read_body(request, settings.max_body_bytes))
        store_config()
        label_request(request, family_deployment="documents")
        page = await call(studio.documents.list_documents.remote(tenant, req.limit, req.cursor))
        output = DocumentPage.model_validate(page).model_dump()
        return envelope_response(Envelope(input={"limit": req.limit, "cursor": req.cursor}, output=output,
                                          status="SUCCESS"))

    @api.post("/getDocument", summary="A stored document's id, name, size, chunks, pages and creation time",
              response_model=Envelope, responses=responses(settings, 401, 404, 422, 500, 503),
              openapi_extra=model_body(DocumentRef))
    async def get_document(request: Request, tenant: Tenant):
        req = parse_strict(DocumentRef, await read_body(request, settings.max_body_bytes))
        store_config()
        label_request(request, family_deployment="documents")
        found = await call(studio.documents.get.remote(tenant, req.id))
        if found is None:
            raise NotFound("no such document")
        return envelope_response(Envelope(input={"id": req.id}, output=StoredDocument.model_validate(found).model_dump(),
                                          status="SUCCESS"))

    @api.post("/deleteDocument", summary="Delete a stored document and its vectors (idempotent)",
              description="`output` is `{id, deleted}`: `deleted` is false when the caller's tenant has no such "
              "document (unknown, another tenant's, expired, or already deleted); that is not an error.",
              response_model=Envelope, responses=responses(settings, 401, 404, 422, 500, 503),
              openapi_extra=model_body(DocumentRef))
    async def delete_document(request: Request, tenant: Tenant):
        req = parse_strict(DocumentRef, await read_body(request, settings.max_body_bytes))
        store_config()
        label_request(request, family_deployment="documents")
        deleted = await call(studio.documents.delete.remote(tenant, req.id))
        output = DeletedDocument(id=req.id, deleted=bool(deleted)).model_dump()
        return envelope_response(Envelope(input={"id": req.id}, output=output, status="SUCCESS"))

    return api
