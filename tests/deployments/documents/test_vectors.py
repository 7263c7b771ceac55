"""The Qdrant-backed vector index (local mode, in memory and on disk): tenancy, search restricted to ids,
the ledger (reservations, records, pages, usage), expiry on every read, the retention delete."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from deployments.chat.messages import Source
from deployments.documents.chunking import Chunk
from deployments.documents.vectors import (
    PENDING,
    READY,
    DimensionMismatch,
    Expiry,
    RecordGone,
    VectorIndex,
    ledger_id,
    point_id,
    utc_text,
)

DIM = 4
NOW = datetime.now(UTC)
LONG_AGO = NOW - timedelta(days=365)


def unit(*values: float) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def chunks(texts: list[str], page: int = 1) -> list[Chunk]:
    return [Chunk(index=i, page=page + i, text=t) for i, t in enumerate(texts)]


def add(index: VectorIndex, tenant: str, doc: str, texts: list[str], vectors: list[list[float]], pages: int = 1,
        created: datetime = NOW, name: str = "a.pdf", ready: bool = True) -> None:
    """A document as the store writes one: reservation, chunks, then ready."""
    index.reserve(tenant, doc, name=name, size=1234, created=created)
    index.reserve_chunks(tenant, doc, len(texts), pages)
    index.upsert(tenant, doc, chunks(texts), vectors, pages=pages, created=created)
    if ready:
        index.finish(tenant, doc)


@pytest.fixture
def index():
    opened = VectorIndex(path=":memory:", collection="test_docs")
    yield opened
    opened.close()


def test_needs_exactly_one_location():
    with pytest.raises(ValueError):
        VectorIndex()
    with pytest.raises(ValueError):
        VectorIndex(path=":memory:", url="http://qdrant:6333")


def test_ids_are_deterministic_and_scoped():
    assert point_id("a", "d", 0) == point_id("a", "d", 0)
    assert len({point_id("a", "d", 0), point_id("b", "d", 0), point_id("a", "e", 0), point_id("a", "d", 1)}) == 4
    assert ledger_id("a", "d") == ledger_id("a", "d") != ledger_id("b", "d")
    assert utc_text(datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "2025-01-02T03:04:05.000006Z"
    with pytest.raises(ValueError):
        utc_text(datetime(2025, 1, 2))  # naive: refused


def test_empty_index_knows_nothing(index):
    assert index.dimension() is None
    assert index.count("acme", "doc") == 0
    assert index.record("acme", "doc", LONG_AGO) is None
    assert index.records("acme", LONG_AGO, 10) == ([], None)
    assert index.usage("acme", LONG_AGO) == (0, 0)
    assert index.delete("acme", "doc") is False
    assert index.search("acme", ["doc"], unit(1, 0, 0, 0), 3) == []
    assert index.delete_expired(Expiry(cutoff=NOW, stale_before=NOW)) == 0


def test_upsert_search_record(index):
    add(index, "acme", "doc1", ["north", "east", "south"], [unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(-1, 0, 0, 0)],
        pages=7, name="compass.pdf")
    assert index.dimension() == DIM
    assert index.count("acme", "doc1") == 3
    record = index.record("acme", "doc1", LONG_AGO)
    assert record is not None and record.state == READY
    assert record.public() == {"id": "doc1", "name": "compass.pdf", "size": 1234, "chunks": 3, "pages": 7,
                               "created": NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}
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
    add(index, "acme", "shared-id", ["acme secret"], [unit(1, 0, 0, 0)])
    add(index, "globex", "globex-doc", ["globex text"], [unit(1, 0, 0, 0)])
    # another tenant's id behaves exactly like an unknown id
    assert index.count("globex", "shared-id") == 0 == index.count("globex", "no-such-id")
    assert index.record("globex", "shared-id", LONG_AGO) is None
    assert index.search("globex", ["shared-id"], unit(1, 0, 0, 0), 5) == []
    assert index.search("globex", ["shared-id", "globex-doc"], unit(1, 0, 0, 0), 5)[0].text == "globex text"
    assert index.delete("globex", "shared-id") is False
    assert index.count("acme", "shared-id") == 1  # untouched
    assert [r.id for r in index.records("globex", LONG_AGO, 10)[0]] == ["globex-doc"]
    assert index.usage("globex", LONG_AGO) == (1, 1)
    # the same document id under two tenants stays two documents
    add(index, "globex", "shared-id", ["globex own"], [unit(0, 1, 0, 0)])
    assert [s.text for s in index.search("acme", ["shared-id"], unit(0, 1, 0, 0), 5)] == ["acme secret"]
    assert index.delete("globex", "shared-id") is True
    assert index.count("acme", "shared-id") == 1 and index.record("acme", "shared-id", LONG_AGO) is not None


def test_search_is_restricted_to_the_given_documents(index):
    add(index, "acme", "doc1", ["one"], [unit(1, 0, 0, 0)])
    add(index, "acme", "doc2", ["two"], [unit(0.9, 0.1, 0, 0)])
    add(index, "acme", "doc3", ["three"], [unit(0, 0, 1, 0)])
    assert [s.document_id for s in index.search("acme", ["doc3"], unit(1, 0, 0, 0), 5)] == ["doc3"]
    assert {s.document_id for s in index.search("acme", ["doc2", "doc3"], unit(1, 0, 0, 0), 5)} == {"doc2", "doc3"}


def test_delete_removes_every_point_and_the_record(index):
    add(index, "acme", "doc1", [f"c{i}" for i in range(150)], [unit(1, i, 0, 0) for i in range(150)])
    add(index, "acme", "doc2", ["keep"], [unit(1, 0, 0, 0)])
    assert index.count("acme", "doc1") == 150
    assert index.delete("acme", "doc1") is True
    assert index.count("acme", "doc1") == 0
    assert index.record("acme", "doc1", LONG_AGO) is None
    assert index.client.count("test_docs", exact=True).count == 1  # only doc2's point is left
    assert index.client.count("test_docs_ledger", exact=True).count == 1
    assert index.delete("acme", "doc1") is False


def test_a_pending_reservation_counts_but_is_not_a_document(index):
    index.reserve("acme", "doc1", name="a.pdf", size=10, created=NOW)
    assert index.usage("acme", LONG_AGO) == (1, 0)
    index.reserve_chunks("acme", "doc1", 12, 3)
    assert index.usage("acme", LONG_AGO) == (1, 12)
    assert index.record("acme", "doc1", LONG_AGO) is None  # not visible until ready
    assert index.records("acme", LONG_AGO, 10) == ([], None)
    assert index.delete("acme", "doc1") is False  # a running store's reservation is left to it
    assert index.usage("acme", LONG_AGO) == (1, 12)
    index.finish("acme", "doc1")
    assert index.record("acme", "doc1", LONG_AGO) is not None
    index.forget("acme", "doc1")
    assert index.usage("acme", LONG_AGO) == (0, 0)
    with pytest.raises(RecordGone):  # a record swept away while its store ran
        index.finish("acme", "doc1")


def test_records_page_through_the_tenants_documents(index):
    for i in range(7):
        add(index, "acme", f"doc{i}", [f"text {i}"], [unit(1, i, 0, 0)], name=f"{i}.pdf")
    add(index, "globex", "other", ["x"], [unit(1, 0, 0, 0)])
    index.reserve("acme", "pending", name="p.pdf", size=1, created=NOW)
    seen: list[str] = []
    offset = None
    pages = 0
    while True:
        page, offset = index.records("acme", LONG_AGO, 3, offset)
        assert len(page) <= 3
        seen += [r.id for r in page]
        pages += 1
        if offset is None:
            break
    assert sorted(seen) == [f"doc{i}" for i in range(7)] and len(seen) == 7 and pages == 3
    assert index.usage("acme", LONG_AGO) == (8, 7)  # the pending reservation counts


def test_every_read_hides_what_expired(index):
    add(index, "acme", "old", ["old text"], [unit(1, 0, 0, 0)], created=NOW - timedelta(days=40))
    add(index, "acme", "new", ["new text"], [unit(1, 0, 0, 0)], created=NOW - timedelta(days=1))
    cutoff = NOW - timedelta(days=30)
    assert index.record("acme", "old", cutoff) is None and index.record("acme", "new", cutoff) is not None
    assert [r.id for r in index.records("acme", cutoff, 10)[0]] == ["new"]
    assert index.usage("acme", cutoff) == (1, 1)
    assert [s.document_id for s in index.search("acme", ["old", "new"], unit(1, 0, 0, 0), 5, cutoff)] == ["new"]
    assert index.count("acme", "old") == 1  # still stored until the sweep


def test_delete_expired_removes_records_and_vectors(index):
    old = NOW - timedelta(days=40)
    add(index, "acme", "old", ["a", "b"], [unit(1, 0, 0, 0), unit(0, 1, 0, 0)], created=old)
    add(index, "acme", "new", ["c"], [unit(1, 0, 0, 0)])
    add(index, "short", "week-old", ["d"], [unit(1, 0, 0, 0)], created=NOW - timedelta(days=7))
    add(index, "short", "fresh", ["e"], [unit(1, 0, 0, 0)])
    add(index, "acme", "stale", ["f"], [unit(1, 0, 0, 0)], created=NOW - timedelta(hours=3), ready=False)
    add(index, "acme", "running", ["g"], [unit(1, 0, 0, 0)], ready=False)
    index.upsert("acme", "legacy", chunks(["before the ledger"]), [unit(1, 0, 0, 0)])
    index.client.delete_payload("test_docs", keys=["created"], points=[point_id("acme", "legacy", 0)])
    expiry = Expiry(cutoff=NOW - timedelta(days=30), stale_before=NOW - timedelta(hours=1),
                    tenants={"short": NOW - timedelta(days=2)})
    assert index.delete_expired(expiry) == 3  # old, week-old (its tenant keeps 2 days), stale
    for tenant, doc in (("acme", "old"), ("short", "week-old"), ("acme", "stale"), ("acme", "legacy")):
        assert index.count(tenant, doc) == 0, doc
        assert index._record(tenant, doc) is None, doc
    for tenant, doc in (("acme", "new"), ("short", "fresh"), ("acme", "running")):
        assert index.count(tenant, doc) == 1 and index._record(tenant, doc) is not None, doc
    assert index.delete_expired(expiry) == 0


def test_dimension_mismatch(index):
    index.upsert("acme", "doc1", chunks(["a"]), [unit(1, 0, 0, 0)])
    with pytest.raises(DimensionMismatch):
        index.upsert("acme", "doc2", chunks(["b"]), [[1.0, 0.0]])
    with pytest.raises(DimensionMismatch):
        index.search("acme", ["doc1"], [1.0, 0.0], 1)
    with pytest.raises(ValueError):
        index.upsert("acme", "doc3", chunks(["a", "b"]), [unit(1, 0, 0, 0)])


def test_local_mode_on_disk_persists_and_closes_once(tmp_path):
    path = str(tmp_path / "qdrant")
    first = VectorIndex(path=path)
    add(first, "acme", "doc1", ["kept on disk"], [unit(0, 0, 0, 1)], pages=2)
    first.ping()
    first.close()
    first.close()  # harmless
    assert first.closed
    second = VectorIndex(path=path)  # the file lock was released
    assert second.collection == "studio_documents" and second.ledger == "studio_documents_ledger"
    record = second.record("acme", "doc1", LONG_AGO)
    assert record is not None and (record.chunks, record.pages, record.state) == (1, 2, READY)
    assert second.search("acme", ["doc1"], unit(0, 0, 0, 1), 1)[0].text == "kept on disk"
    second.reserve("acme", "doc2", name="b.pdf", size=1, created=NOW)
    assert second._record("acme", "doc2").state == PENDING  # type: ignore[union-attr]
    second.close()
