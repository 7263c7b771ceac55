"""The document vector index: one Qdrant collection, every point owned by a tenant.

:class:`VectorIndex` opens Qdrant either

* in **local mode** on disk (``path=...``): Qdrant's embedded engine inside this process.
  Only ONE process may open a path at a time (Qdrant holds a file lock; a second opener
  fails), so the deployment owning it runs as a single replica. ``path=":memory:"`` keeps
  everything in memory (tests); or
* on a **server** (``url=...``; the API key comes from ``STUDIO_QDRANT_API_KEY`` when set).

The collection (default ``studio_documents``) is created on first write with the
embedder's dimension and cosine distance; on a server, keyword payload indexes on
``tenant`` and ``document_id`` are created with it. Each point is one chunk; its payload
is ``tenant``, ``document_id``, ``chunk`` (index), ``page`` (1-based, where the chunk
starts), ``text`` and ``pages`` (the document's page count, for :meth:`describe`). Point
ids are ``uuid5`` of ``tenant/document_id/chunk``: re-writing a chunk overwrites it.

Tenancy: every read, count and delete filters on the tenant, so another tenant's
document id behaves exactly like an unknown id. Methods are blocking; call them off the
event loop.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from deployments.chat.messages import Source

if TYPE_CHECKING:
    from deployments.documents.chunking import Chunk

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "studio_documents"
API_KEY_ENV = "STUDIO_QDRANT_API_KEY"
_POINT_NAMESPACE = uuid.UUID("6f1c1a52-3f7e-4f5e-9d55-2b8e8f0c6a11")  # fixed: ids stay stable across versions


def point_id(tenant: str, document_id: str, chunk: int) -> str:
    """The deterministic id of one chunk's point."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{tenant}/{document_id}/{chunk}"))


class DimensionMismatch(RuntimeError):
    """The collection was made for another embedding size (the embedding model changed)."""


class VectorIndex:
    """Tenant-scoped chunk vectors in one Qdrant collection (see the module docstring)."""

    def __init__(self, *, path: str | None = None, url: str | None = None, collection: str = DEFAULT_COLLECTION,
                 api_key: str | None = None, timeout: int = 30):
        from qdrant_client import QdrantClient

        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (local mode) or url (a Qdrant server)")
        self.collection = collection
        self.local = path is not None
        if path is not None:
            self.client = QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
        else:
            key = api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)
            self.client = QdrantClient(url=url, api_key=key, timeout=timeout)
        # Local mode keeps its state in plain Python structures: one caller at a time.
        # A server client is thread-safe; the lock then only guards collection creation.
        self._lock = threading.RLock()
        self._dimension: int | None = None

    # -- the collection -----------------------------------------------------
    def _locked(self):
        return self._lock if self.local else _NoLock()

    def dimension(self) -> int | None:
        """The collection's vector size, or None before the first write."""
        if self._dimension is None:
            with self._locked():
                if not self.client.collection_exists(self.collection):
                    return None
                vectors = self.client.get_collection(self.collection).config.params.vectors
                size = getattr(vectors, "size", None)
                if size is None:
                    raise DimensionMismatch(f"collection {self.collection} has no single unnamed vector")
                self._dimension = int(size)
        return self._dimension

    def ensure_collection(self, dimension: int) -> None:
        """Create the collection for ``dimension``-sized vectors unless it exists; refuse a
        collection made for another size."""
        from qdrant_client import models

        with self._lock:
            current = self.dimension()
            if current is None:
                self.client.create_collection(
                    self.collection, vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE))
                if not self.local:
                    for name in ("tenant", "document_id"):
                        self.client.create_payload_index(self.collection, field_name=name,
                                                         field_schema=models.PayloadSchemaType.KEYWORD)
                logger.info("created collection %s dimension=%d", self.collection, dimension,
                            extra={"collection": self.collection, "dimension": dimension})
                self._dimension = dimension
            elif current != dimension:
                raise DimensionMismatch(f"collection {self.collection} holds {current}-dimensional vectors, "
                                        f"the embedder gives {dimension}")

    def _exists(self) -> bool:
        return self.dimension() is not None

    @staticmethod
    def _filter(tenant: str, document_ids: Sequence[str]):
        from qdrant_client import models

        if not tenant:
            raise ValueError("a tenant is required")
        must: list[Any] = [models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
        if len(document_ids) == 1:
            must.append(models.FieldCondition(key="document_id", match=models.MatchValue(value=document_ids[0])))
        else:
            must.append(models.FieldCondition(key="document_id", match=models.MatchAny(any=list(document_ids))))
        return models.Filter(must=must)

    # -- writes -------------------------------------------------------------
    def upsert(self, tenant: str, document_id: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]],
               pages: int = 0) -> None:
        """Write one point per chunk (its vector at the same position); ``pages`` is the
        document's page count, kept for :meth:`describe`."""
        from qdrant_client import models

        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        if not chunks:
            return
        self.ensure_collection(len(vectors[0]))
        points = [
            models.PointStruct(
                id=point_id(tenant, document_id, chunk.index),
                vector=[float(x) for x in vector],
                payload={"tenant": tenant, "document_id": document_id, "chunk": chunk.index, "page": chunk.page,
                         "text": chunk.text, "pages": pages},
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        with self._locked():
            self.client.upsert(self.collection, points=points, wait=True)

    def delete(self, tenant: str, document_id: str) -> bool:
        """Remove every point of the tenant's document; False when it has none."""
        from qdrant_client import models

        if not self._exists() or self.count(tenant, document_id) == 0:
            return False
        with self._locked():
            self.client.delete(self.collection, points_selector=models.FilterSelector(
                filter=self._filter(tenant, [document_id])), wait=True)
        return True

    # -- reads ----------------------------------------------------------------
    def count(self, tenant: str, document_id: str) -> int:
        """How many chunks the tenant's document has (0: unknown to this tenant)."""
        if not self._exists():
            return 0
        with self._locked():
            return int(self.client.count(self.collection, count_filter=self._filter(tenant, [document_id]),
                                         exact=True).count)

    def describe(self, tenant: str, document_id: str) -> dict[str, Any] | None:
        """``{"id", "chunks", "pages"}`` of the tenant's document, or None when it has none."""
        chunks = self.count(tenant, document_id)
        if chunks == 0:
            return None
        with self._locked():
            points, _ = self.client.scroll(self.collection, scroll_filter=self._filter(tenant, [document_id]), limit=1,
                                           with_payload=["pages"], with_vectors=False)
        pages = int((points[0].payload or {}).get("pages", 0)) if points else 0
        return {"id": document_id, "chunks": chunks, "pages": pages}

    def search(self, tenant: str, document_ids: Sequence[str], vector: Sequence[float], limit: int) -> list[Source]:
        """The ``limit`` chunks of the tenant's ``document_ids`` nearest to ``vector``, best first."""
        if not document_ids or limit < 1 or not self._exists():
            return []
        dimension = self.dimension()
        if len(vector) != dimension:
            raise DimensionMismatch(f"the query vector has {len(vector)} dimensions, the collection {dimension}")
        with self._locked():
            response = self.client.query_points(self.collection, query=[float(x) for x in vector],
                                                query_filter=self._filter(tenant, document_ids), limit=limit,
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

    def ping(self) -> None:
        """Raise when Qdrant does not answer."""
        with self._locked():
            self.client.get_collections()

    def close(self) -> None:
        with self._locked():
            self.client.close()


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
