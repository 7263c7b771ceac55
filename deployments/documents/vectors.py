"""The document vector index: chunks in one Qdrant collection, one ledger record per document.

:class:`VectorIndex` opens Qdrant either

* in **local mode** on disk (``path=...``): Qdrant's embedded engine inside this process.
  Only ONE process may open a path at a time (Qdrant holds a file lock; a second opener
  fails), so the deployment owning it runs as a single replica. ``path=":memory:"`` keeps
  everything in memory (tests); or
* on a **server** (``url=...``; the API key comes from ``STUDIO_QDRANT_API_KEY`` when set, or
  from that file in ``$STUDIO_SECRETS_DIR``).

Two collections:

* **chunks** (``collection``, default ``studio_documents``): created on first write with the
  embedder's dimension and cosine distance. Each point is one chunk; its payload is ``tenant``,
  ``document_id``, ``chunk`` (index), ``page`` (1-based, where the chunk starts), ``text``,
  ``pages`` and ``created`` (the document's, RFC 3339 UTC). Point ids are ``uuid5`` of
  ``tenant/document_id/chunk``: re-writing a chunk overwrites it.
* **ledger** (``<collection>_ledger``): one point per document, its metadata, so listing,
  counting a tenant's usage and checking an id never touch the chunks. Payload: ``tenant``,
  ``document_id``, ``name``, ``size`` (bytes of the PDF), ``chunks``, ``pages``, ``created``
  and ``state``: ``pending`` from the moment a store reserves its place under the tenant's caps
  (before the PDF is parsed) until its last chunk is written, then ``ready``. Only ``ready``
  records are documents a client sees; ``pending`` ones count against the caps. Qdrant points
  need a vector: a ledger record's is a constant one-dimensional ``[1.0]`` (never searched).

On a server, payload indexes are created with each collection (and once per process on
collections made before they existed): keyword ``tenant``, ``document_id`` (and ``state`` on the
ledger), and a datetime index on ``created``, which the retention filters use. Local mode
ignores payload indexes (it scans), so none are made there.

Tenancy: every read, count and delete filters on the tenant (a ledger record is read by id, then
its tenant compared), so another tenant's document id behaves exactly like an unknown id.
Expiry: every read takes a ``cutoff`` and sees only what was created at or after it, so an
expired document is never returned even before :meth:`VectorIndex.delete_expired` removes it.
Methods are blocking; call them off the event loop.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from deployments.chat.messages import Source
from deployments.vendors import VendorSettings

if TYPE_CHECKING:
    from deployments.documents.chunking import Chunk

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "studio_documents"
LEDGER_SUFFIX = "_ledger"
API_KEY_ENV = "STUDIO_QDRANT_API_KEY"
PENDING, READY = "pending", "ready"
#: Ledger records read per scroll call when a tenant's usage is summed.
USAGE_PAGE = 256
_POINT_NAMESPACE = uuid.UUID("6f1c1a52-3f7e-4f5e-9d55-2b8e8f0c6a11")  # fixed: ids stay stable across versions
_LEDGER_VECTOR = [1.0]


def point_id(tenant: str, document_id: str, chunk: int) -> str:
    """The deterministic id of one chunk's point."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{tenant}/{document_id}/{chunk}"))


def ledger_id(tenant: str, document_id: str) -> str:
    """The deterministic id of a document's ledger record."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{tenant}/{document_id}"))


def utc_text(moment: datetime) -> str:
    """``moment`` as RFC 3339 in UTC with microseconds (``2025-01-31T12:00:00.000000Z``): what Qdrant's
    datetime index and ``DatetimeRange`` read."""
    if moment.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: Any) -> datetime | None:
    """A ``created`` payload back as an aware datetime (None when it is not one of ours)."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DocumentRecord:
    """A document as its ledger record describes it."""

    id: str
    name: str
    size: int
    chunks: int
    pages: int
    created: datetime
    state: str

    def public(self) -> dict[str, Any]:
        """What a client sees: ``created`` as ISO-8601 UTC to the second."""
        return {"id": self.id, "name": self.name, "size": self.size, "chunks": self.chunks, "pages": self.pages,
                "created": self.created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


@dataclass(frozen=True)
class Expiry:
    """What :meth:`VectorIndex.delete_expired` removes: documents created before ``cutoff`` (before
    ``tenants[t]`` for a tenant with its own retention), and reservations still ``pending`` from
    before ``stale_before`` (a store that died half-way)."""

    cutoff: datetime
    stale_before: datetime
    tenants: Mapping[str, datetime] = field(default_factory=dict)


class DimensionMismatch(RuntimeError):
    """The collection was made for another embedding size (the embedding model changed)."""


class RecordGone(RuntimeError):
    """A ledger record disappeared while its store was running (swept as a stale reservation)."""


class VectorIndex:
    """Tenant-scoped chunk vectors and document records in Qdrant (see the module docstring)."""

    def __init__(self, *, path: str | None = None, url: str | None = None, collection: str = DEFAULT_COLLECTION,
                 api_key: str | None = None, timeout: int = 30):
        from qdrant_client import QdrantClient

        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (local mode) or url (a Qdrant server)")
        self.collection = collection
        self.ledger = collection + LEDGER_SUFFIX
        self.local = path is not None
        if path is not None:
            self.client = QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
        else:
            # The environment, or the file of that name in $STUDIO_SECRETS_DIR (a cluster: the documents role).
            key = api_key if api_key is not None else (VendorSettings().qdrant_api_key or None)
            self.client = QdrantClient(url=url, api_key=key, timeout=timeout)
        # Local mode keeps its state in plain Python structures: one caller at a time.
        # A server client is thread-safe; the lock then only guards collection creation.
        self._lock = threading.RLock()
        self._dimension: int | None = None
        self._ledger_ready = False
        self._indexed: set[str] = set()
        self._closed = False

    # -- the collections ----------------------------------------------------
    def _locked(self):
        return self._lock if self.local else _NoLock()

    def dimension(self) -> int | None:
        """The chunk collection's vector size, or None before the first write."""
        if self._dimension is None:
            with self._locked():
                if not self.client.collection_exists(self.collection):
                    return None
                vectors = self.client.get_collection(self.collection).config.params.vectors
                size = getattr(vectors, "size", None)
                if size is None:
                    raise DimensionMismatch(f"collection {self.collection} has no single unnamed vector")
                self._dimension = int(size)
                self._ensure_indexes(self.collection, ("tenant", "document_id"))
        return self._dimension

    def _create(self, name: str, size: int, distance: Any) -> None:
        """Create collection ``name`` unless it exists (another replica may create it at the same time)."""
        from qdrant_client import models

        if self.client.collection_exists(name):
            return
        try:
            self.client.create_collection(name, vectors_config=models.VectorParams(size=size, distance=distance))
        except Exception:
            if not self.client.collection_exists(name):
                raise
        logger.info("created collection %s dimension=%d", name, size, extra={"collection": name, "dimension": size})

    def _ensure_indexes(self, name: str, keywords: Sequence[str]) -> None:
        """On a server: keyword indexes on ``keywords`` and a datetime index on ``created`` (creating an
        index that exists is a no-op); once per collection and process. Local mode scans: none."""
        from qdrant_client import models

        if self.local or name in self._indexed:
            return
        wanted = [(key, models.PayloadSchemaType.KEYWORD) for key in keywords]
        wanted.append(("created", models.PayloadSchemaType.DATETIME))
        for key, schema in wanted:
            try:
                self.client.create_payload_index(name, field_name=key, field_schema=schema)
            except Exception:  # filters still work without an index, only slower
                logger.warning("could not create payload index %s.%s", name, key, exc_info=True,
                               extra={"collection": name, "field": key})
        self._indexed.add(name)

    def ensure_collection(self, dimension: int) -> None:
        """Create the chunk collection for ``dimension``-sized vectors unless it exists; refuse a
        collection made for another size."""
        from qdrant_client import models

        with self._lock:
            current = self.dimension()
            if current is None:
                with self._locked():
                    self._create(self.collection, dimension, models.Distance.COSINE)
                    self._ensure_indexes(self.collection, ("tenant", "document_id"))
                self._dimension = dimension
            elif current != dimension:
                raise DimensionMismatch(f"collection {self.collection} holds {current}-dimensional vectors, "
                                        f"the embedder gives {dimension}")

    def _ensure_ledger(self) -> None:
        from qdrant_client import models

        if self._ledger_ready:
            return
        with self._lock, self._locked():
            if not self._ledger_ready:
                self._create(self.ledger, len(_LEDGER_VECTOR), models.Distance.DOT)
                self._ensure_indexes(self.ledger, ("tenant", "document_id", "state"))
                self._ledger_ready = True

    def _has_ledger(self) -> bool:
        if not self._ledger_ready:
            with self._locked():
                if not self.client.collection_exists(self.ledger):
                    return False
            self._ensure_ledger()
        return True

    def _exists(self) -> bool:
        return self.dimension() is not None

    # -- filters ----------------------------------------------------------------
    @staticmethod
    def _filter(tenant: str, document_ids: Sequence[str], cutoff: datetime | None = None):
        from qdrant_client import models

        if not tenant:
            raise ValueError("a tenant is required")
        must: list[Any] = [models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
        if len(document_ids) == 1:
            must.append(models.FieldCondition(key="document_id", match=models.MatchValue(value=document_ids[0])))
        else:
            must.append(models.FieldCondition(key="document_id", match=models.MatchAny(any=list(document_ids))))
        if cutoff is not None:
            must.append(_fresh(cutoff))
        return models.Filter(must=must)

    @staticmethod
    def _tenant_records(tenant: str, cutoff: datetime, ready_only: bool):
        from qdrant_client import models

        if not tenant:
            raise ValueError("a tenant is required")
        must: list[Any] = [models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)), _fresh(cutoff)]
        if ready_only:
            must.append(models.FieldCondition(key="state", match=models.MatchValue(value=READY)))
        return models.Filter(must=must)

    # -- the ledger ---------------------------------------------------------------
    def reserve(self, tenant: str, document_id: str, *, name: str, size: int, created: datetime) -> None:
        """Write the document's ``pending`` record (no chunks yet): its place under the tenant's caps."""
        from qdrant_client import models

        if not tenant:
            raise ValueError("a tenant is required")
        self._ensure_ledger()
        payload = {"tenant": tenant, "document_id": document_id, "name": name, "size": int(size), "chunks": 0,
                   "pages": 0, "created": utc_text(created), "state": PENDING}
        with self._locked():
            self.client.upsert(self.ledger, points=[models.PointStruct(
                id=ledger_id(tenant, document_id), vector=_LEDGER_VECTOR, payload=payload)], wait=True)

    def _set(self, tenant: str, document_id: str, values: dict[str, Any]) -> None:
        try:
            with self._locked():
                self.client.set_payload(self.ledger, payload=values, points=[ledger_id(tenant, document_id)],
                                        wait=True)
        except Exception as exc:  # local mode: KeyError; a server: 404
            if self._record(tenant, document_id) is None:
                raise RecordGone(document_id) from exc
            raise

    def reserve_chunks(self, tenant: str, document_id: str, chunks: int, pages: int) -> None:
        """Record how many chunks (and pages) the pending document will write."""
        self._set(tenant, document_id, {"chunks": int(chunks), "pages": int(pages)})

    def finish(self, tenant: str, document_id: str) -> None:
        """Mark the document ``ready``: from now on clients see it."""
        self._set(tenant, document_id, {"state": READY})

    def usage(self, tenant: str, cutoff: datetime) -> tuple[int, int]:
        """``(documents, chunks)`` the tenant holds or has reserved (pending included), unexpired."""
        if not self._has_ledger():
            return 0, 0
        documents = chunks = 0
        offset: Any = None
        while True:
            with self._locked():
                points, offset = self.client.scroll(self.ledger, scroll_filter=self._tenant_records(tenant, cutoff, False),
                                                    limit=USAGE_PAGE, offset=offset, with_payload=["chunks"],
                                                    with_vectors=False)
            documents += len(points)
            chunks += sum(int((p.payload or {}).get("chunks", 0) or 0) for p in points)
            if offset is None:
                return documents, chunks

    def _record(self, tenant: str, document_id: str) -> DocumentRecord | None:
        if not self._has_ledger():
            return None
        with self._locked():
            found = self.client.retrieve(self.ledger, ids=[ledger_id(tenant, document_id)], with_payload=True,
                                         with_vectors=False)
        if not found:
            return None
        payload = found[0].payload or {}
        if payload.get("tenant") != tenant or payload.get("document_id") != document_id:
            return None  # defence in depth: the id is derived from both
        return _to_record(payload)

    def record(self, tenant: str, document_id: str, cutoff: datetime) -> DocumentRecord | None:
        """The tenant's ``ready`` document created at or after ``cutoff``, or None."""
        found = self._record(tenant, document_id)
        if found is None or found.state != READY or found.created < cutoff:
            return None
        return found

    def records(self, tenant: str, cutoff: datetime, limit: int, offset: str | None = None
                ) -> tuple[list[DocumentRecord], str | None]:
        """One page of the tenant's ``ready``, unexpired documents in point-id order, and the offset of
        the next page (None: this was the last). ``offset`` is a previous call's next offset."""
        if limit < 1:
            raise ValueError("limit must be positive")
        if not self._has_ledger():
            return [], None
        with self._locked():
            points, following = self.client.scroll(self.ledger, scroll_filter=self._tenant_records(tenant, cutoff, True),
                                                   limit=limit, offset=offset, with_payload=True, with_vectors=False)
        out = []
        for point in points:
            payload = point.payload or {}
            if payload.get("tenant") != tenant:  # defence in depth: the filter already says so
                continue
            found = _to_record(payload)
            if found is not None:
                out.append(found)
        return out, (str(following) if following is not None else None)

    # -- chunks -----------------------------------------------------------------
    def upsert(self, tenant: str, document_id: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]],
               pages: int = 0, created: datetime | None = None) -> None:
        """Write one point per chunk (its vector at the same position); ``pages`` is the document's page
        count and ``created`` its creation time (now when not given)."""
        from qdrant_client import models

        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        if not chunks:
            return
        stamp = utc_text(created or datetime.now(UTC))
        self.ensure_collection(len(vectors[0]))
        points = [
            models.PointStruct(
                id=point_id(tenant, document_id, chunk.index),
                vector=[float(x) for x in vector],
                payload={"tenant": tenant, "document_id": document_id, "chunk": chunk.index, "page": chunk.page,
                         "text": chunk.text, "pages": pages, "created": stamp},
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        with self._locked():
            self.client.upsert(self.collection, points=points, wait=True)

    def forget(self, tenant: str, document_id: str) -> None:
        """Remove the document: its record first (so it stops being visible at once), then its chunks."""
        from qdrant_client import models

        if self._has_ledger():
            with self._locked():
                self.client.delete(self.ledger, points_selector=models.PointIdsList(
                    points=[ledger_id(tenant, document_id)]), wait=True)
        if self._exists():
            with self._locked():
                self.client.delete(self.collection, points_selector=models.FilterSelector(
                    filter=self._filter(tenant, [document_id])), wait=True)

    def delete(self, tenant: str, document_id: str) -> bool:
        """Remove the tenant's document; False when it has no ``ready`` one under that id (a pending
        reservation belongs to a store still running, and is left to it)."""
        found = self._record(tenant, document_id)
        if found is None or found.state != READY:
            return False
        self.forget(tenant, document_id)
        return True

    def count(self, tenant: str, document_id: str) -> int:
        """How many chunk points the tenant's document has (0: unknown to this tenant)."""
        if not self._exists():
            return 0
        with self._locked():
            return int(self.client.count(self.collection, count_filter=self._filter(tenant, [document_id]),
                                         exact=True).count)

    def search(self, tenant: str, document_ids: Sequence[str], vector: Sequence[float], limit: int,
               cutoff: datetime | None = None) -> list[Source]:
        """The ``limit`` chunks of the tenant's ``document_ids`` (created at or after ``cutoff``) nearest
        to ``vector``, best first."""
        if not document_ids or limit < 1 or not self._exists():
            return []
        dimension = self.dimension()
        if len(vector) != dimension:
            raise DimensionMismatch(f"the query vector has {len(vector)} dimensions, the collection {dimension}")
        with self._locked():
            response = self.client.query_points(self.collection, query=[float(x) for x in vector],
                                                query_filter=self._filter(tenant, document_ids, cutoff), limit=limit,
                                                with_payload=True, with_vectors=False)
        sources = []
        for point in response.points:
            payload = point.payload or {}
            if payload.get("tenant") != tenant:  # defence in depth: the filter already says so
                continue
            sources.append(Source(kind="document", text=str(payload.get("text", "")), score=float(point.score),
                                  document_id=str(payload.get("document_id")), chunk=int(payload.get("chunk", 0)),
                                  page=int(payload.get("page", 0))))
        return sources

    # -- retention ------------------------------------------------------------------
    def delete_expired(self, expiry: Expiry, batch: int = 256) -> int:
        """Delete what ``expiry`` names; the number of documents (ledger records) removed.

        Records go first (filtered delete on ``created``), then chunks by the same filter, plus chunk
        points without ``created`` (written before documents had a lifecycle: their age is unknown,
        and no record makes them visible). Stale ``pending`` reservations (at most ``batch`` per call)
        are removed with their chunks by document id."""
        from qdrant_client import models

        expired = self._expired_filter(expiry)
        removed = 0
        if self._has_ledger():
            with self._locked():
                removed = int(self.client.count(self.ledger, count_filter=expired, exact=True).count)
                if removed:
                    self.client.delete(self.ledger, points_selector=models.FilterSelector(filter=expired), wait=True)
            stale = models.Filter(must=[models.FieldCondition(key="state", match=models.MatchValue(value=PENDING)),
                                        models.FieldCondition(key="created",
                                                              range=models.DatetimeRange(lt=expiry.stale_before))])
            with self._locked():
                points, _ = self.client.scroll(self.ledger, scroll_filter=stale, limit=batch,
                                               with_payload=["tenant", "document_id"], with_vectors=False)
            for point in points:
                payload = point.payload or {}
                tenant, document_id = payload.get("tenant"), payload.get("document_id")
                if isinstance(tenant, str) and tenant and isinstance(document_id, str):
                    self.forget(tenant, document_id)
                    removed += 1
        if self._exists():
            legacy = models.Filter(must=[models.IsEmptyCondition(is_empty=models.PayloadField(key="created"))])
            with self._locked():
                self.client.delete(self.collection, points_selector=models.FilterSelector(
                    filter=models.Filter(should=[expired, legacy])), wait=True)
        return removed

    @staticmethod
    def _expired_filter(expiry: Expiry):
        from qdrant_client import models

        def older(cutoff: datetime) -> Any:
            return models.FieldCondition(key="created", range=models.DatetimeRange(lt=cutoff))

        others = list(expiry.tenants)
        default = models.Filter(must=[older(expiry.cutoff)],
                                must_not=[models.FieldCondition(key="tenant", match=models.MatchAny(any=others))]
                                if others else None)
        branches = [default] + [
            models.Filter(must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
                                older(cutoff)])
            for tenant, cutoff in expiry.tenants.items()]
        return models.Filter(should=branches)

    # -- the client -------------------------------------------------------------------
    def ping(self) -> None:
        """Raise when Qdrant does not answer."""
        with self._locked():
            self.client.get_collections()

    def close(self) -> None:
        """Close the Qdrant client (local mode: release its file lock); later calls do nothing."""
        with self._locked():
            if self._closed:
                return
            self._closed = True
            self.client.close()

    @property
    def closed(self) -> bool:
        return self._closed


def _fresh(cutoff: datetime) -> Any:
    from qdrant_client import models

    return models.FieldCondition(key="created", range=models.DatetimeRange(gte=cutoff))


def _to_record(payload: Mapping[str, Any]) -> DocumentRecord | None:
    created = parse_utc(payload.get("created"))
    document_id = payload.get("document_id")
    if created is None or not isinstance(document_id, str):
        return None
    return DocumentRecord(id=document_id, name=str(payload.get("name") or ""), size=int(payload.get("size", 0) or 0),
                          chunks=int(payload.get("chunks", 0) or 0), pages=int(payload.get("pages", 0) or 0),
                          created=created, state=str(payload.get("state") or ""))


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
