"""The Qdrant-backed vector index: tenancy, search restricted to ids, delete, describe, local mode on disk."""

from __future__ import annotations

import math

import pytest

from deployments.chat.messages import Source
from deployments.documents.chunking import Chunk
from deployments.documents.vectors import DimensionMismatch, VectorIndex, point_id

DIM = 4


def unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def chunks(texts: list[str], page: int = 1) -> list[Chunk]:
    return [Chunk(index=i, page=page + i, text=t) for i, t in enumerate(texts)]


@pytest.fixture
def index() -> VectorIndex:
    return VectorIndex(path=":memory:", collection="test_docs")


def test_needs_exactly_one_location():
    with pytest.raises(ValueError):
        VectorIndex()
    with pytest.raises(ValueError):
        VectorIndex(path=":memory:", url="http://qdrant:6333")


def test_point_ids_are_deterministic_and_scoped():
    assert point_id("a", "d", 0) == point_id("a", "d", 0)
    assert len({point_id("a", "d", 0), point_id("b", "d", 0), point_id("a", "e", 0), point_id("a", "d", 1)}) == 4


def test_empty_index_knows_nothing(index):
    assert index.dimension() is None
    assert index.count("acme", "doc") == 0
    assert index.describe("acme", "doc") is None
    assert index.delete("acme", "doc") is False
    assert index.search("acme", ["doc"], unit(1, 0, 0, 0), 3) == []


def test_upsert_search_describe(index):
    index.upsert("acme", "doc1", chunks(["north", "east", "south"]), [unit(1, 0, 0, 0), unit(0, 1, 0, 0),
                                                                       unit(-1, 0, 0, 0)], pages=7)
    assert index.dimension() == DIM
    assert index.count("acme", "doc1") == 3
    assert index.describe("acme", "doc1") == {"id": "doc1", "chunks": 3, "pages": 7}
    found = index.search("acme", ["doc1"], unit(1, 0.1, 0, 0), 2)
    assert [s.text for s in found] == ["north", "east"]
    best = found[0]
    assert isinstance(best, Source) and best.kind == "document"
    assert (best.document_id, best.chunk, best.page) == ("doc1", 0, 1)
    assert best.score is not None and best.score > found[1].score  # type: ignore[operator]
    assert index.search("acme", ["doc1"], unit(1, 0, 0, 0), 10)[-1].text == "south"


def test_upsert_is_idempotent(index):
    for _ in range(2):
        index.upsert("acme", "doc1", chunks(["a", "b"]), [unit(1, 0, 0, 0), unit(0, 1, 0, 0)])
    assert index.count("acme", "doc1") == 2


def test_tenant_isolation(index):
    index.upsert("acme", "shared-id", chunks(["acme secret"]), [unit(1, 0, 0, 0)], pages=1)
    index.upsert("globex", "globex-doc", chunks(["globex text"]), [unit(1, 0, 0, 0)], pages=1)
    # another tenant's id behaves exactly like an unknown id
    assert index.count("globex", "shared-id") == 0 == index.count("globex", "no-such-id")
    assert index.describe("globex", "shared-id") is None
    assert index.search("globex", ["shared-id"], unit(1, 0, 0, 0), 5) == []
    assert index.search("globex", ["shared-id", "globex-doc"], unit(1, 0, 0, 0), 5)[0].text == "globex text"
    assert index.delete("globex", "shared-id") is False
    assert index.count("acme", "shared-id") == 1  # untouched
    # the same document id under two tenants stays two documents
    index.upsert("globex", "shared-id", chunks(["globex own"]), [unit(0, 1, 0, 0)], pages=1)
    assert [s.text for s in index.search("acme", ["shared-id"], unit(0, 1, 0, 0), 5)] == ["acme secret"]
    assert index.delete("globex", "shared-id") is True
    assert index.count("acme", "shared-id") == 1


def test_search_is_restricted_to_the_given_documents(index):
    index.upsert("acme", "doc1", chunks(["one"]), [unit(1, 0, 0, 0)])
    index.upsert("acme", "doc2", chunks(["two"]), [unit(0.9, 0.1, 0, 0)])
    index.upsert("acme", "doc3", chunks(["three"]), [unit(0, 0, 1, 0)])
    assert [s.document_id for s in index.search("acme", ["doc3"], unit(1, 0, 0, 0), 5)] == ["doc3"]
    assert {s.document_id for s in index.search("acme", ["doc2", "doc3"], unit(1, 0, 0, 0), 5)} == {"doc2", "doc3"}


def test_delete_removes_every_point(index):
    index.upsert("acme", "doc1", chunks([f"c{i}" for i in range(150)]), [unit(1, i, 0, 0) for i in range(150)])
    index.upsert("acme", "doc2", chunks(["keep"]), [unit(1, 0, 0, 0)])
    assert index.count("acme", "doc1") == 150
    assert index.delete("acme", "doc1") is True
    assert index.count("acme", "doc1") == 0
    assert index.describe("acme", "doc1") is None
    assert index.client.count("test_docs", exact=True).count == 1  # only doc2's point is left
    assert index.delete("acme", "doc1") is False


def test_dimension_mismatch(index):
    index.upsert("acme", "doc1", chunks(["a"]), [unit(1, 0, 0, 0)])
    with pytest.raises(DimensionMismatch):
        index.upsert("acme", "doc2", chunks(["b"]), [[1.0, 0.0]])
    with pytest.raises(DimensionMismatch):
        index.search("acme", ["doc1"], [1.0, 0.0], 1)
    with pytest.raises(ValueError):
        index.upsert("acme", "doc3", chunks(["a", "b"]), [unit(1, 0, 0, 0)])


def test_local_mode_on_disk_persists(tmp_path):
    path = str(tmp_path / "qdrant")
    first = VectorIndex(path=path)
    first.upsert("acme", "doc1", chunks(["kept on disk"]), [unit(0, 0, 0, 1)], pages=2)
    first.ping()
    first.close()
    second = VectorIndex(path=path)
    assert second.collection == "studio_documents"
    assert second.describe("acme", "doc1") == {"id": "doc1", "chunks": 1, "pages": 2}
    assert second.search("acme", ["doc1"], unit(0, 0, 0, 1), 1)[0].text == "kept on disk"
    second.close()
