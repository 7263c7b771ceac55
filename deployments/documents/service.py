"""The document store deployment behind ``pdfVectorStore``, ``listDocuments``, ``getDocument``,
``deleteDocument`` and the chat's DBSearch tool.

:class:`DocumentStore` is a plain class (the builder binds it with ``serve.deployment``; it
needs no GPU). The ingress fetches a PDF (its SSRF guard, byte cap) and calls
:meth:`DocumentStore.store` by Serve handle; the chat service calls :meth:`DocumentStore.search`.

Storing a PDF: a place under the tenant's caps is reserved first (a ``pending`` ledger record,
see :mod:`.vectors`), then the text is extracted in a limited child process (:mod:`.pdf`; at most
``max_parallel_parses`` at once), cut into overlapping chunks (:mod:`.chunking`), the chunk count
is reserved, and vectors from the embedding deployment (slices of ``embed_slice`` texts: one Ray
message per slice, not one huge one) are written to Qdrant slice by slice; the record then turns
``ready``. A failure (or cancellation) half-way deletes the record and what was written before
the error is raised, so a document is either fully indexed or absent; its id (a fresh uuid4)
reaches the client only after the last write.

Caps (``max_documents_per_tenant``, ``max_chunks_per_tenant``; per-tenant overrides in
``limits.tenants``): a store is refused with a 422 before its PDF is parsed when the tenant has no
document or chunk left, and after chunking (before any embedding) when its chunks do not fit.
Each check writes the reservation first and counts after, holding a per-tenant lock, so
concurrent stores of one tenant cannot overshoot: in one replica they take turns; across
replicas (a Qdrant server) each one sees the others' reservations, so at worst both are refused.

Retention (``retention_days``, default 30): every read sees only documents created since the
cutoff, so an expired document is never returned; a background task of the replica
(every ``sweep_seconds``) deletes expired records and their vectors, and reservations left
``pending`` for ``pending_seconds`` by a store that died. It stops when the replica does.

Tenancy: every call names the tenant; a document id the tenant does not have — another
tenant's included — is unknown (``DocumentNotFound``, a 404 for the chat; ``getDocument`` 404;
``deleteDocument`` answers ``deleted: false``), never a 403.

Stopping: Ray Serve awaits a replica's ``__del__`` when it stops it (``async def`` accepted, see
:meth:`DocumentStore.aclose`); this class's ``__del__`` is the instance attribute set to
:meth:`DocumentStore.aclose`, so Python's garbage collector (which cannot await) never calls it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from deployments.chat.messages import Source
from deployments.documents.chunking import Chunk, chunk_pages
from deployments.documents.pdf import PdfLimits, check_header, extract_pages
from deployments.documents.rules import LIST_MAX, check_name, decode_cursor, encode_cursor
from deployments.documents.vectors import DEFAULT_COLLECTION, Expiry, RecordGone, VectorIndex
from deployments.errors import DocumentNotFound, InvalidJobError, JobError, ModelError, new_incident

logger = logging.getLogger(__name__)

EMBED_SECONDS = 120.0  # one slice's call to the embedding deployment
HEALTH_SECONDS = 10.0
DAY_SECONDS = 86400.0
#: What ``limits.tenants`` may override for one tenant.
TENANT_OVERRIDES = ("max_documents_per_tenant", "max_chunks_per_tenant", "retention_days")

T = TypeVar("T")


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's caps and retention (the defaults, or its overrides)."""

    max_documents: int
    max_chunks: int
    retention_days: float

    @property
    def retention(self) -> timedelta:
        return timedelta(seconds=self.retention_days * DAY_SECONDS)


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
    max_documents_per_tenant: int = 1000
    max_chunks_per_tenant: int = 200_000
    retention_days: float = 30.0
    sweep_seconds: float = 3600.0  # how often the replica deletes expired documents
    pending_seconds: float = 3600.0  # a reservation older than this, never finished, is reclaimed
    tenants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per-tenant overrides

    def for_tenant(self, tenant: str) -> TenantLimits:
        own = self.tenants.get(tenant) or {}

        def pick(name: str) -> Any:
            value = own.get(name)
            return getattr(self, name) if value is None else value

        return TenantLimits(max_documents=int(pick("max_documents_per_tenant")),
                            max_chunks=int(pick("max_chunks_per_tenant")),
                            retention_days=float(pick("retention_days")))

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
                     "embed_slice", "max_parallel_parses", "max_documents_per_tenant", "max_chunks_per_tenant"):
            if getattr(limits, name) < 1:
                raise ValueError(f"{name} must be positive")
        for name in ("retention_days", "sweep_seconds", "pending_seconds"):
            if not getattr(limits, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not isinstance(limits.tenants, Mapping):
            raise ValueError("tenants must map a tenant to its overrides")
        for tenant, own in limits.tenants.items():
            if not isinstance(tenant, str) or not tenant or not isinstance(own, Mapping):
                raise ValueError("tenants must map a tenant to its overrides")
            if unknown := set(own) - set(TENANT_OVERRIDES):
                raise ValueError(f"tenants.{tenant}: unknown overrides: {', '.join(sorted(unknown))}")
            for name, value in own.items():
                if value is not None and not value > 0:
                    raise ValueError(f"tenants.{tenant}.{name} must be positive")
        return limits


def _job_cause(exc: BaseException) -> JobError | None:
    """The job error behind a failed deployment call (Ray wraps it as ``exc.cause``)."""
    if isinstance(exc, JobError):
        return exc
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, JobError) else None


class _TenantLocks:
    """One asyncio lock per tenant, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, tenant: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(tenant, (asyncio.Lock(), 0))
        self._locks[tenant] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[tenant]
            if users == 1:
                del self._locks[tenant]
            else:
                self._locks[tenant] = (lock, users - 1)


class DocumentStore:
    """Tenant-scoped PDF documents in a vector index (see the module docstring).

    ``embedder`` is the embedding deployment's handle (``await embedder.embed.remote(texts)``
    gives one vector per text). Exactly one of ``qdrant_path`` (local mode: a directory, one
    process only, so one replica) or ``qdrant_url`` (a server; key from ``STUDIO_QDRANT_API_KEY``).
    """

    def __init__(self, embedder: Any, *, qdrant_path: str | None = None, qdrant_url: str | None = None,
                 collection: str = DEFAULT_COLLECTION, limits: dict[str, Any] | None = None):
        from deployments.replica import prepare_replica

        prepare_replica()
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
        # The retention sweep's Qdrant calls run on a thread of their own: closing waits for one in flight.
        self._sweep_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="documents-sweep")
        self._sweeper: asyncio.Task[None] | None = None
        self._tenant_locks = _TenantLocks()
        self._closed = False
        # Ray Serve awaits the replica's ``__del__`` when it stops it (an ``async def`` is awaited);
        # an instance attribute, so that Python's garbage collector, which cannot await, never calls it.
        self.__del__ = self.aclose
        self._start_sweeper()  # Serve runs the constructor on the replica's event loop
        logger.info("document store open collection=%s mode=%s", collection, "local" if qdrant_path else "server",
                    extra={"collection": collection, "qdrant_mode": "local" if qdrant_path else "server"})

    # -- helpers -------------------------------------------------------------------
    async def _io(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking index call, off the event loop."""
        return await asyncio.to_thread(functools.partial(call, *args, **kwargs))

    def _cutoff(self, tenant: str, now: datetime | None = None) -> datetime:
        """The oldest creation time of a document of ``tenant`` that has not expired."""
        return (now or datetime.now(UTC)) - self.limits.for_tenant(tenant).retention

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
    async def store(self, tenant: str, pdf: bytes, name: str | None = None) -> dict[str, Any]:
        """Index one PDF for ``tenant`` under ``name`` (default ``document.pdf``):
        ``{"id", "chunks", "pages", "characters", "name", "size"}``.

        Refusals are ``InvalidJobError`` on ``url`` naming the limit or the cap (see :mod:`.pdf`
        and the module docstring), or on ``name``."""
        _check_tenant(tenant)
        self._start_sweeper()
        name = check_name(name)
        limits = self.limits
        check_header(pdf, limits.pdf())  # too big or not a PDF: refused before any reservation
        quota = limits.for_tenant(tenant)
        start = time.perf_counter()
        document_id = uuid.uuid4().hex
        created = datetime.now(UTC)
        reserved = False
        try:
            async with self._tenant_locks.hold(tenant):
                await self._io(self.index.reserve, tenant, document_id, name=name, size=len(pdf), created=created)
                reserved = True
                documents, chunks_used = await self._io(self.index.usage, tenant, self._cutoff(tenant))
                _check_room(quota, documents, chunks_used)
            async with self._parses:
                pages = await asyncio.get_running_loop().run_in_executor(self._parse_pool, extract_pages, pdf,
                                                                         limits.pdf())
            chunks = chunk_pages(pages, chunk_chars=limits.chunk_chars, overlap_chars=limits.chunk_overlap,
                                 max_chunks=limits.max_chunks)
            if not chunks:  # extract_pages refuses a PDF without text; whitespace-only text ends here
                raise InvalidJobError("url", "the PDF has no extractable text (a scanned document or images only?); "
                                             "OCR is not supported, send a PDF with a text layer")
            page_count = len(pages)
            async with self._tenant_locks.hold(tenant):
                await self._io(self.index.reserve_chunks, tenant, document_id, len(chunks), page_count)
                _, chunks_used = await self._io(self.index.usage, tenant, self._cutoff(tenant))
                _check_chunks_fit(quota, len(chunks), chunks_used)
            await self._index(tenant, document_id, chunks, page_count, created)
            await self._finish(tenant, document_id, len(chunks))
        except BaseException:
            if reserved:
                await self._forget(tenant, document_id)
            raise
        characters = sum(len(page.text) for page in pages)
        logger.info("document stored tenant=%s id=%s pages=%d chunks=%d seconds=%.2f", tenant, document_id,
                    page_count, len(chunks), time.perf_counter() - start,
                    extra={"tenant": tenant, "document_id": document_id, "pages": page_count, "chunks": len(chunks),
                           "characters": characters, "bytes": len(pdf)})
        return {"id": document_id, "chunks": len(chunks), "pages": page_count, "characters": characters,
                "name": name, "size": len(pdf)}

    async def _index(self, tenant: str, document_id: str, chunks: Sequence[Chunk], pages: int,
                     created: datetime) -> None:
        step = self.limits.embed_slice
        for offset in range(0, len(chunks), step):
            part = list(chunks[offset:offset + step])
            vectors = await self._embed([chunk.text for chunk in part], "url")
            await self._io(self.index.upsert, tenant, document_id, part, vectors, pages, created)

    async def _finish(self, tenant: str, document_id: str, chunks: int) -> None:
        """Turn the record ``ready`` once every chunk is in; a record swept away meanwhile (the store
        outlived ``pending_seconds``) or a chunk missing is a ``ModelError``."""
        try:
            await self._io(self.index.finish, tenant, document_id)
        except RecordGone:
            incident = new_incident()
            logger.error("document %s: its reservation was reclaimed before the store finished (incident %s)",
                         document_id, incident, extra={"tenant": tenant, "document_id": document_id,
                                                       "incident": incident})
            raise ModelError("reservation reclaimed while storing", incident) from None
        written = await self._io(self.index.count, tenant, document_id)
        if written != chunks:
            incident = new_incident()
            logger.error("document %s: %d of %d chunks written (incident %s)", document_id, written, chunks, incident,
                         extra={"tenant": tenant, "document_id": document_id, "incident": incident})
            raise ModelError("chunks missing after the store", incident)

    async def _forget(self, tenant: str, document_id: str) -> None:
        """Remove a half-written document; a failure here is logged (its id never left this replica)."""
        try:
            await asyncio.shield(asyncio.to_thread(self.index.forget, tenant, document_id))
        except BaseException:
            logger.error("could not remove half-indexed document %s", document_id, exc_info=True,
                         extra={"tenant": tenant, "document_id": document_id})

    async def search(self, tenant: str, document_ids: list[str], query: str, limit: int) -> list[Source]:
        """The ``limit`` chunks of the tenant's ``document_ids`` nearest to ``query``, best first.

        An id the tenant does not have (or that expired) is ``DocumentNotFound("pdf_references[i]")``;
        an empty query is an ``InvalidJobError``. A query longer than ``max_query_chars`` is cut there
        (at a word boundary), not refused: the chat passes the user's whole last turn, and an embedding
        model reads only its first few hundred tokens anyway."""
        _check_tenant(tenant)
        self._start_sweeper()
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
        for index, document_id in enumerate(document_ids):
            if not isinstance(document_id, str) or not _looks_like_id(document_id):
                raise DocumentNotFound(f"pdf_references[{index}]")
        ids = list(dict.fromkeys(document_ids))  # duplicates ask once
        cutoff = self._cutoff(tenant)
        found = await self._io(lambda: {d: self.index.record(tenant, d, cutoff) is not None for d in ids})
        for index, document_id in enumerate(document_ids):
            if not found[document_id]:
                raise DocumentNotFound(f"pdf_references[{index}]")
        [vector] = await self._embed([query], "query")
        return await self._io(self.index.search, tenant, ids, vector, limit, cutoff)

    async def delete(self, tenant: str, document_id: str) -> bool:
        """Remove the tenant's document; False when the tenant has no such document (unknown,
        another tenant's, already deleted, or expired — an expired one is removed all the same)."""
        _check_tenant(tenant)
        self._start_sweeper()
        if not isinstance(document_id, str) or not _looks_like_id(document_id):
            return False
        cutoff = self._cutoff(tenant)

        def run() -> bool:
            visible = self.index.record(tenant, document_id, cutoff) is not None
            return self.index.delete(tenant, document_id) and visible

        deleted = await self._io(run)
        if deleted:
            logger.info("document deleted tenant=%s id=%s", tenant, document_id,
                        extra={"tenant": tenant, "document_id": document_id})
        return deleted

    async def get(self, tenant: str, document_id: str) -> dict[str, Any] | None:
        """``{"id", "name", "size", "chunks", "pages", "created"}`` of the tenant's document, or None."""
        _check_tenant(tenant)
        self._start_sweeper()
        if not isinstance(document_id, str) or not _looks_like_id(document_id):
            return None
        found = await self._io(self.index.record, tenant, document_id, self._cutoff(tenant))
        return found.public() if found is not None else None

    async def list_documents(self, tenant: str, limit: int, cursor: str | None = None) -> dict[str, Any]:
        """One page of the tenant's documents: ``{"documents": [...], "next_cursor", "usage"}``;
        ``usage`` is what the tenant holds (pending stores included) against its caps."""
        _check_tenant(tenant)
        self._start_sweeper()
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIST_MAX:
            raise InvalidJobError("limit", f"allowed: 1..{LIST_MAX}")
        offset = decode_cursor(cursor) if cursor is not None else None
        quota = self.limits.for_tenant(tenant)
        cutoff = self._cutoff(tenant)

        def run() -> tuple[list[Any], str | None, tuple[int, int]]:
            records, following = self.index.records(tenant, cutoff, limit, offset)
            return records, following, self.index.usage(tenant, cutoff)

        records, following, (documents, chunks) = await self._io(run)
        return {"documents": [record.public() for record in records],
                "next_cursor": encode_cursor(following) if following is not None else None,
                "usage": {"documents": documents, "chunks": chunks, "max_documents": quota.max_documents,
                          "max_chunks": quota.max_chunks, "retention_days": quota.retention_days}}

    def info(self) -> dict[str, Any]:
        """The limits in force and the index's mode (plain JSON)."""
        return {"kind": "documents", "collection": self.index.collection,
                "qdrant": "local" if self.index.local else "server", "limits": asdict(self.limits)}

    # -- retention ----------------------------------------------------------------
    def expiry(self, now: datetime | None = None) -> Expiry:
        """What a sweep at ``now`` deletes (each tenant with its own retention named)."""
        now = now or datetime.now(UTC)
        own = {tenant: self._cutoff(tenant, now) for tenant, values in self.limits.tenants.items()
               if (values or {}).get("retention_days") is not None}
        return Expiry(cutoff=now - timedelta(seconds=self.limits.retention_days * DAY_SECONDS),
                      stale_before=now - timedelta(seconds=self.limits.pending_seconds), tenants=own)

    async def sweep(self) -> int:
        """Delete expired documents (and stale reservations) now; how many were removed."""
        expiry = self.expiry()
        removed = await asyncio.get_running_loop().run_in_executor(self._sweep_pool, self.index.delete_expired, expiry)
        if removed:
            logger.info("retention sweep removed documents=%d", removed, extra={"documents": removed})
        return removed

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_seconds)
            try:
                await self.sweep()
            except Exception:  # Qdrant unreachable for a moment: the next round tries again
                logger.warning("retention sweep failed", exc_info=True)

    def _start_sweeper(self) -> None:
        """Start the retention task on the running event loop unless it runs there already."""
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = self._sweeper
        if task is None or task.done() or task.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep_forever(), name="documents-retention")

    # -- stopping -------------------------------------------------------------------
    def _stop_sweeper(self) -> asyncio.Task[None] | None:
        task, self._sweeper = self._sweeper, None
        if task is not None and not task.done():
            task.cancel()
            return task
        return None

    def _release(self) -> None:
        self._sweep_pool.shutdown(wait=True)  # a sweep's Qdrant call in flight finishes first
        self._parse_pool.shutdown(wait=False, cancel_futures=True)
        self.index.close()

    async def aclose(self) -> None:
        """Stop the retention task (and wait for it), then release the parse and sweep threads and the
        Qdrant client (local mode: its file lock). Later calls do nothing. Serve calls this as
        ``__del__`` when the replica stops, after its requests have drained."""
        if self._closed:
            return
        self._closed = True
        task = self._stop_sweeper()
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([task])
        await asyncio.to_thread(self._release)
        logger.info("document store closed", extra={"collection": self.index.collection})

    def close(self) -> None:
        """:meth:`aclose` for callers without an event loop (the retention task is cancelled, not awaited)."""
        if self._closed:
            return
        self._closed = True
        self._stop_sweeper()
        self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    async def check_health(self) -> None:
        """Serve's liveness check: Qdrant answers (within a few seconds)."""
        self._start_sweeper()
        await asyncio.wait_for(asyncio.to_thread(self.index.ping), HEALTH_SECONDS)


def _check_room(quota: TenantLimits, documents: int, chunks_used: int) -> None:
    """Before parsing: the reservation just written (counted in ``documents``) must fit, and at least
    one chunk must be left."""
    if documents > quota.max_documents:
        raise InvalidJobError("url", f"this tenant already stores {documents - 1} documents; allowed: at most "
                                     f"{quota.max_documents} documents per tenant (delete some with deleteDocument)")
    if chunks_used >= quota.max_chunks:
        raise InvalidJobError("url", f"this tenant already stores {chunks_used} text chunks; allowed: at most "
                                     f"{quota.max_chunks} chunks per tenant (delete documents with deleteDocument)")


def _check_chunks_fit(quota: TenantLimits, chunks: int, chunks_used: int) -> None:
    """After chunking, before embedding: ``chunks_used`` counts this document's ``chunks`` too."""
    if chunks_used > quota.max_chunks:
        raise InvalidJobError("url", f"the document makes {chunks} text chunks and this tenant already stores "
                                     f"{chunks_used - chunks}; allowed: at most {quota.max_chunks} chunks per tenant "
                                     "(delete documents with deleteDocument, or split the document)")


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
