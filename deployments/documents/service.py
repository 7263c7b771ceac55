"""The document store deployment behind ``pdfVectorStore`` and the chat's DBSearch tool.

:class:`DocumentStore` is a plain class (the builder binds it with ``serve.deployment``; it
needs no GPU). The ingress fetches a PDF (its SSRF guard, byte cap) and calls
:meth:`DocumentStore.store` by Serve handle; the chat service calls :meth:`DocumentStore.search`.

Storing a PDF: text extraction in a limited child process (:mod:`.pdf`; at most
``max_parallel_parses`` at once), overlapping chunks (:mod:`.chunking`), vectors from the
embedding deployment in slices of ``embed_slice`` texts (one Ray message per slice, not one
huge one), written to Qdrant (:mod:`.vectors`) slice by slice. A failure (or cancellation)
half-way deletes what was written before the error is raised, so a document is either fully
indexed or absent; its id (a fresh uuid4) reaches the client only after the last write.

Tenancy: every call names the tenant; a document id the tenant does not have — another
tenant's included — is unknown (``DocumentNotFound``, a 404), never a 403.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from deployments.chat.messages import Source
from deployments.documents.chunking import Chunk, chunk_pages
from deployments.documents.pdf import PdfLimits, extract_pages
from deployments.documents.vectors import DEFAULT_COLLECTION, VectorIndex
from deployments.errors import DocumentNotFound, InvalidJobError, JobError, ModelError, new_incident

logger = logging.getLogger(__name__)

EMBED_SECONDS = 120.0  # one slice's call to the embedding deployment
HEALTH_SECONDS = 10.0


@dataclass(frozen=True)
class DocumentLimits:
    """Everything one store or search may cost; ``limits`` of the constructor overrides these."""

    max_bytes: int = PdfLimits.max_bytes
    max_pages: int = PdfLimits.max_pages
    max_chars: int = PdfLimits.max_chars
    parse_seconds: float = PdfLimits.parse_seconds
    memory_bytes: int = PdfLimits.memory_bytes
    chunk_chars: int = 1000
    chunk_overlap: int = 200
    max_chunks: int = 5000
    max_query_chars: int = 2000
    max_results: int = 20
    max_search_documents: int = 50  # document ids per search
    embed_slice: int = 64  # texts per call to the embedding deployment
    max_parallel_parses: int = 2  # PDF parser children at once (each may use memory_bytes)

    def pdf(self) -> PdfLimits:
        return PdfLimits(max_bytes=self.max_bytes, max_pages=self.max_pages, max_chars=self.max_chars,
                         parse_seconds=self.parse_seconds, memory_bytes=self.memory_bytes)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DocumentLimits:
        known = {f.name for f in fields(cls)}
        unknown = set(values or {}) - known
        if unknown:
            raise ValueError(f"unknown document limits: {', '.join(sorted(unknown))}")
        limits = cls(**(values or {}))
        limits.pdf()  # validates the PDF limits
        if not 0 <= limits.chunk_overlap <= limits.chunk_chars // 2:
            raise ValueError("chunk_overlap must be in 0..chunk_chars/2")
        for name in ("chunk_chars", "max_chunks", "max_query_chars", "max_results", "max_search_documents",
                     "embed_slice", "max_parallel_parses"):
            if getattr(limits, name) < 1:
                raise ValueError(f"{name} must be positive")
        return limits


def _job_cause(exc: BaseException) -> JobError | None:
    """The job error behind a failed deployment call (Ray wraps it as ``exc.cause``)."""
    if isinstance(exc, JobError):
        return exc
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, JobError) else None


class DocumentStore:
    """Tenant-scoped PDF documents in a vector index (see the module docstring).

    ``embedder`` is the embedding deployment's handle (``await embedder.embed.remote(texts)``
    gives one vector per text). Exactly one of ``qdrant_path`` (local mode: a directory, one
    process only, so one replica) or ``qdrant_url`` (a server; key from ``STUDIO_QDRANT_API_KEY``).
    """

    def __init__(self, embedder: Any, *, qdrant_path: str | None = None, qdrant_url: str | None = None,
                 collection: str = DEFAULT_COLLECTION, limits: dict[str, Any] | None = None):
        from deployments.replica_net import bind_replica_grpc_to_node_ip

        bind_replica_grpc_to_node_ip()  # Serve binds the replica's gRPC server to [::] otherwise
        if (qdrant_path is None) == (qdrant_url is None):
            raise ValueError("give exactly one of qdrant_path (local mode) or qdrant_url (a Qdrant server)")
        if qdrant_path is not None:  # ${STUDIO_QDRANT_PATH} from the replica's own environment when set there
            qdrant_path = os.path.expanduser(os.path.expandvars(qdrant_path))
            if "$" in qdrant_path:
                raise ValueError("qdrant_path names an environment variable that is not set")
        self.embedder = embedder
        self.limits = DocumentLimits.from_dict(limits)
        self.index = VectorIndex(path=qdrant_path, url=qdrant_url, collection=collection)
        # Parses wait on the event loop (a cancelled request never starts one) and run on their own
        # threads, so Qdrant calls and the health check never queue behind a PDF.
        self._parses = asyncio.Semaphore(self.limits.max_parallel_parses)
        self._parse_pool = concurrent.futures.ThreadPoolExecutor(self.limits.max_parallel_parses,
                                                                 thread_name_prefix="pdf-parse")
        logger.info("document store open collection=%s mode=%s", collection, "local" if qdrant_path else "server",
                    extra={"collection": collection, "qdrant_mode": "local" if qdrant_path else "server"})

    # -- embedding --------------------------------------------------------------
    async def _embed(self, texts: list[str], field: str) -> list[list[float]]:
        """Vectors for ``texts`` from the embedding deployment, checked; its job errors pass
        through, anything else is a ``ModelError`` logged under an incident."""
        try:
            vectors = await asyncio.wait_for(self.embedder.embed.remote(texts), EMBED_SECONDS)
        except Exception as exc:
            cause = _job_cause(exc)
            if cause is not None:
                raise cause from None
            incident = new_incident()
            logger.error("embedding call failed (incident %s)", incident, exc_info=exc, extra={"incident": incident})
            raise ModelError("the embedding deployment failed", incident) from exc
        if (not isinstance(vectors, list) or len(vectors) != len(texts)
                or any(not isinstance(v, list | tuple) or not v for v in vectors)
                or len({len(v) for v in vectors}) != 1
                or not all(math.isfinite(x) for v in vectors for x in v)):
            incident = new_incident()
            logger.error("embedding deployment answered %s for %d texts (incident %s)", type(vectors).__name__,
                         len(texts), incident, extra={"incident": incident, "field": field})
            raise ModelError("the embedding deployment gave malformed vectors", incident)
        return [list(map(float, v)) for v in vectors]

    # -- the API ------------------------------------------------------------------
    async def store(self, tenant: str, pdf: bytes) -> dict[str, Any]:
        """Index one PDF for ``tenant``: ``{"id", "chunks", "pages", "characters"}``.

        Refusals are ``InvalidJobError`` on ``url`` naming the limit (see :mod:`.pdf`)."""
        _check_tenant(tenant)
        start = time.perf_counter()
        async with self._parses:
            pages = await asyncio.get_running_loop().run_in_executor(self._parse_pool, extract_pages, pdf,
                                                                     self.limits.pdf())
        limits = self.limits
        chunks = chunk_pages(pages, chunk_chars=limits.chunk_chars, overlap_chars=limits.chunk_overlap,
                             max_chunks=limits.max_chunks)
        if not chunks:  # extract_pages refuses a PDF without text; whitespace-only text ends here
            raise InvalidJobError("url", "the PDF has no extractable text (a scanned document or images only?); OCR is "
                                         "not supported, send a PDF with a text layer")
        document_id = uuid.uuid4().hex
        page_count = len(pages)
        try:
            await self._index(tenant, document_id, chunks, page_count)
        except BaseException:
            await self._forget(tenant, document_id)
            raise
        characters = sum(len(page.text) for page in pages)
        logger.info("document stored tenant=%s id=%s pages=%d chunks=%d seconds=%.2f", tenant, document_id,
                    page_count, len(chunks), time.perf_counter() - start,
                    extra={"tenant": tenant, "document_id": document_id, "pages": page_count, "chunks": len(chunks),
                           "characters": characters})
        return {"id": document_id, "chunks": len(chunks), "pages": page_count, "characters": characters}

    async def _index(self, tenant: str, document_id: str, chunks: Sequence[Chunk], pages: int) -> None:
        step = self.limits.embed_slice
        for offset in range(0, len(chunks), step):
            part = list(chunks[offset:offset + step])
            vectors = await self._embed([chunk.text for chunk in part], "url")
            await asyncio.to_thread(self.index.upsert, tenant, document_id, part, vectors, pages)

    async def _forget(self, tenant: str, document_id: str) -> None:
        """Remove a half-written document; a failure here is logged (its id never left this replica)."""
        try:
            await asyncio.shield(asyncio.to_thread(self.index.delete, tenant, document_id))
        except BaseException:
            logger.error("could not remove half-indexed document %s", document_id, exc_info=True,
                         extra={"tenant": tenant, "document_id": document_id})

    async def search(self, tenant: str, document_ids: list[str], query: str, limit: int) -> list[Source]:
        """The ``limit`` chunks of the tenant's ``document_ids`` nearest to ``query``, best first.

        An id the tenant does not have is ``DocumentNotFound("pdf_references[i]")``; an empty query
        is an ``InvalidJobError``. A query longer than ``max_query_chars`` is cut there (at a word
        boundary), not refused: the chat passes the user's whole last turn, and an embedding model
        reads only its first few hundred tokens anyway."""
        _check_tenant(tenant)
        limits = self.limits
        if not isinstance(document_ids, list | tuple) or not document_ids:
            raise InvalidJobError("pdf_references", "give at least one document id (from pdfVectorStore)")
        if len(document_ids) > limits.max_search_documents:
            raise InvalidJobError("pdf_references", f"got {len(document_ids)} document ids; allowed: at most "
                                                    f"{limits.max_search_documents}")
        if not isinstance(query, str) or not query.strip():
            raise InvalidJobError("query", "the search query is empty")
        query = cut_query(query, limits.max_query_chars)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= limits.max_results:
            raise InvalidJobError("number_of_context", f"allowed: 1..{limits.max_results}")
        ids = list(dict.fromkeys(document_ids))  # duplicates ask once
        for index, document_id in enumerate(document_ids):
            if not isinstance(document_id, str) or not _looks_like_id(document_id):
                raise DocumentNotFound(f"pdf_references[{index}]")
        counts = await asyncio.to_thread(lambda: [self.index.count(tenant, d) for d in ids])
        known = dict(zip(ids, counts, strict=True))
        for index, document_id in enumerate(document_ids):
            if known[document_id] == 0:
                raise DocumentNotFound(f"pdf_references[{index}]")
        [vector] = await self._embed([query], "query")
        return await asyncio.to_thread(self.index.search, tenant, ids, vector, limit)

    async def delete(self, tenant: str, document_id: str) -> bool:
        """Remove the tenant's document; False when the tenant has no such document."""
        _check_tenant(tenant)
        if not isinstance(document_id, str) or not _looks_like_id(document_id):
            return False
        return await asyncio.to_thread(self.index.delete, tenant, document_id)

    async def get(self, tenant: str, document_id: str) -> dict[str, Any] | None:
        """``{"id", "chunks", "pages"}`` of the tenant's document, or None."""
        _check_tenant(tenant)
        if not isinstance(document_id, str) or not _looks_like_id(document_id):
            return None
        return await asyncio.to_thread(self.index.describe, tenant, document_id)

    def info(self) -> dict[str, Any]:
        """The limits in force and the index's mode (plain JSON)."""
        return {"kind": "documents", "collection": self.index.collection,
                "qdrant": "local" if self.index.local else "server", "limits": asdict(self.limits)}

    def close(self) -> None:
        """Release the index (local mode: its file lock) and the parse threads."""
        self._parse_pool.shutdown(wait=False, cancel_futures=True)
        self.index.close()

    async def check_health(self) -> None:
        """Serve's liveness check: Qdrant answers (within a few seconds)."""
        await asyncio.wait_for(asyncio.to_thread(self.index.ping), HEALTH_SECONDS)


def cut_query(query: str, max_chars: int) -> str:
    """``query`` with whitespace normalised, cut to at most ``max_chars`` at a word boundary when it can."""
    text = " ".join(query.split())
    if len(text) <= max_chars:
        return text
    head = text[:max_chars + 1]
    space = head.rfind(" ")
    return head[:space] if space > max_chars // 2 else text[:max_chars]


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not tenant:
        raise ValueError("a tenant is required")  # the ingress always passes one: a bug, not a 422


def _looks_like_id(document_id: str) -> bool:
    """A store's ids are uuid4 hex; anything else cannot be a document (and is not looked up)."""
    return len(document_id) == 32 and all(c in "0123456789abcdef" for c in document_id)
