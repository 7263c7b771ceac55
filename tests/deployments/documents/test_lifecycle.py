"""Documents have a lifecycle: names, listing with a cursor, per-tenant caps (refused before the parse,
or after chunking and before any embedding; two stores at once cannot overshoot), retention (hidden
at once, deleted by the replica's own sweep, which stops with the replica), idempotent delete, and
the store's clients closed when Serve stops the replica. Real embedder, real Qdrant local mode."""

from __future__ import annotations

import asyncio
import inspect
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deployments.documents import service as service_module
from deployments.documents.rules import (
    DEFAULT_NAME,
    NAME_MAX_CHARS,
    check_name,
    decode_cursor,
    encode_cursor,
    name_from_url,
)
from deployments.documents.service import DocumentLimits, DocumentStore
from deployments.documents.vectors import ledger_id
from deployments.errors import DocumentNotFound, InvalidJobError
from tests.deployments.documents.test_pdf import make_pdf
from tests.deployments.documents.test_service import Handle, paragraphs

LIMITS = {"chunk_chars": 200, "chunk_overlap": 40, "embed_slice": 4}


@pytest.fixture(scope="module")
def small() -> bytes:
    return make_pdf([paragraphs(1, 2)])


@pytest.fixture(scope="module")
def large() -> bytes:
    return make_pdf([paragraphs(1), paragraphs(2), paragraphs(3)])


@pytest.fixture
def parses(monkeypatch) -> list[int]:
    """Counts the PDF parses the store starts."""
    calls: list[int] = []
    real = service_module.extract_pages

    def counting(pdf, limits):
        calls.append(len(pdf))
        return real(pdf, limits)

    monkeypatch.setattr(service_module, "extract_pages", counting)
    return calls


OPENED: list[DocumentStore] = []


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    while OPENED:
        OPENED.pop().close()


def open_store(tmp_path: Path, handle: Any, **limits: Any) -> DocumentStore:
    store = DocumentStore(handle, qdrant_path=str(tmp_path / "qdrant"), limits={**LIMITS, **limits})
    OPENED.append(store)
    return store


def backdate(store: DocumentStore, tenant: str, doc: str, days: float) -> None:
    """Make a stored document ``days`` old (its record and its chunks)."""
    from qdrant_client import models

    stamp = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client = store.index.client
    client.set_payload(store.index.ledger, {"created": stamp}, points=[ledger_id(tenant, doc)], wait=True)
    client.set_payload(store.index.collection, {"created": stamp}, points=models.FilterSelector(
        filter=store.index._filter(tenant, [doc])), wait=True)


def points(store: DocumentStore) -> int:
    if store.index.dimension() is None:
        return 0
    return store.index.client.count(store.index.collection, exact=True).count


# -- names and cursors ---------------------------------------------------------------------
def test_names_are_bounded_and_printable():
    assert check_name(None) == DEFAULT_NAME
    assert check_name("  Q1 report.pdf ") == "Q1 report.pdf"
    assert check_name("x" * NAME_MAX_CHARS) == "x" * NAME_MAX_CHARS
    for bad in ("", "   ", "x" * (NAME_MAX_CHARS + 1), "a\x00b", "line\nbreak", "evil\u202efdp.exe", 7):
        with pytest.raises(InvalidJobError) as caught:
            check_name(bad)
        assert caught.value.field == "name", bad
    assert name_from_url("https://example.com/files/Q1%20report.pdf?x=1") == "Q1 report.pdf"
    assert name_from_url("https://example.com/files/") == DEFAULT_NAME
    assert name_from_url("data:application/pdf;base64,JVBERi0=") == DEFAULT_NAME
    assert name_from_url("https://example.com/a%0Ab%E2%80%AE.pdf") == "ab.pdf"
    assert name_from_url("https://example.com/" + "y" * 500) == "y" * NAME_MAX_CHARS


def test_cursors_round_trip_and_refuse_anything_else():
    point = ledger_id("acme", "d" * 32)
    cursor = encode_cursor(point)
    assert len(cursor) == 22 and decode_cursor(cursor) == point
    for bad in ("", "x" * 22, cursor[:-1], cursor + "A", "../../etc/passwd", None, 5, "A" * 21 + "="):
        if bad is None:
            continue
        with pytest.raises(InvalidJobError) as caught:
            decode_cursor(bad)
        assert caught.value.field == "cursor", bad


def test_limits_are_checked_when_the_store_opens(tmp_path):
    assert DocumentLimits.from_dict({"tenants": {"t": {"retention_days": 1}}}).for_tenant("t").retention_days == 1
    assert DocumentLimits.from_dict(None).for_tenant("t").max_documents == 1000
    for bad in ({"max_documents_per_tenant": 0}, {"retention_days": 0}, {"sweep_seconds": -1},
                {"tenants": {"t": {"max_documents": 3}}}, {"tenants": {"t": {"retention_days": -2}}},
                {"tenants": {"": {}}}):
        with pytest.raises(ValueError):
            DocumentLimits.from_dict(bad)


# -- listing --------------------------------------------------------------------------------
def test_list_pages_through_the_tenants_documents_only(tmp_path, family, small):
    store = open_store(tmp_path, Handle(family))

    async def go():
        ids = [(await store.store("acme", small, f"doc {i}.pdf"))["id"] for i in range(5)]
        await store.store("globex", small, "theirs.pdf")
        pages, cursor = [], None
        while True:
            page = await store.list_documents("acme", 2, cursor)
            pages.append(page)
            cursor = page["next_cursor"]
            if cursor is None:
                return ids, pages

    ids, pages = asyncio.run(go())
    listed = [d for page in pages for d in page["documents"]]
    assert sorted(d["id"] for d in listed) == sorted(ids) and len(pages) == 3
    assert {d["name"] for d in listed} == {f"doc {i}.pdf" for i in range(5)}
    first = listed[0]
    assert set(first) == {"id", "name", "size", "chunks", "pages", "created"}
    assert first["size"] == len(small) and first["pages"] == 1 and first["chunks"] >= 1
    created = datetime.strptime(first["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 120
    assert pages[0]["usage"] == {"documents": 5, "chunks": sum(d["chunks"] for d in listed), "max_documents": 1000,
                                 "max_chunks": 200_000, "retention_days": 30.0}
    theirs = asyncio.run(store.list_documents("globex", 100))
    assert [d["name"] for d in theirs["documents"]] == ["theirs.pdf"] and theirs["next_cursor"] is None
    for limit in (0, 101, True, "5"):
        with pytest.raises(InvalidJobError) as caught:
            asyncio.run(store.list_documents("acme", limit))  # type: ignore[arg-type]
        assert caught.value.field == "limit"
    with pytest.raises(InvalidJobError) as bad:
        asyncio.run(store.list_documents("acme", 2, "not-a-cursor"))
    assert bad.value.field == "cursor"


# -- caps ---------------------------------------------------------------------------------------
def test_the_document_cap_refuses_before_the_parse(tmp_path, family, small, parses):
    store = open_store(tmp_path, Handle(family), max_documents_per_tenant=2)

    async def go():
        kept = [(await store.store("acme", small))["id"] for _ in range(2)]
        with pytest.raises(InvalidJobError) as caught:
            await store.store("acme", small)
        assert len(parses) == 2  # the third PDF was never parsed
        assert caught.value.field == "url" and "at most 2 documents per tenant" in caught.value.message
        assert (await store.store("globex", small))["id"]  # another tenant has its own cap
        assert await store.delete("acme", kept[0])
        return await store.store("acme", small)  # room again

    asyncio.run(go())
    assert asyncio.run(store.list_documents("acme", 10))["usage"]["documents"] == 2


def test_the_chunk_cap_refuses_before_the_parse_when_full_and_before_embedding_when_over(
        tmp_path, family, small, large, parses):
    handle = Handle(family)
    probe = open_store(tmp_path / "probe", handle)
    small_chunks = asyncio.run(probe.store("acme", small))["chunks"]
    probe.close()
    handle.embed.sizes.clear()
    store = open_store(tmp_path, handle, max_chunks_per_tenant=small_chunks + 1)
    parses.clear()

    async def go():
        await store.store("acme", small)
        embeds = len(handle.embed.sizes)
        with pytest.raises(InvalidJobError) as over:  # the large PDF is parsed and chunked, then refused
            await store.store("acme", large)
        assert over.value.field == "url" and f"at most {small_chunks + 1} chunks per tenant" in over.value.message
        assert len(handle.embed.sizes) == embeds and len(parses) == 2  # no embedding for the refused one
        await store.store("acme", make_pdf(["One short line to fill the last chunk."]))
        with pytest.raises(InvalidJobError) as full:  # no chunk left: refused before its parse
            await store.store("acme", small)
        assert len(parses) == 3 and "already stores" in full.value.message

    asyncio.run(go())
    usage = asyncio.run(store.list_documents("acme", 10))["usage"]
    assert usage["chunks"] == small_chunks + 1 == points(store)  # refused stores left no reservation behind
    assert usage["documents"] == 2


def test_two_stores_at_once_cannot_overshoot_the_caps(tmp_path, family, small, large):
    store = open_store(tmp_path, Handle(family), max_documents_per_tenant=1)

    async def two(target: DocumentStore, pdf: bytes) -> list[Any]:
        return await asyncio.gather(target.store("acme", pdf), target.store("acme", pdf), return_exceptions=True)

    results = asyncio.run(two(store, small))
    stored = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, InvalidJobError)]
    assert len(stored) == 1 and len(refused) == 1, results
    assert asyncio.run(store.list_documents("acme", 10))["usage"]["documents"] == 1

    # the chunk cap: two documents that each fit alone, but not together
    store.close()
    chunks = asyncio.run(open_store(tmp_path / "probe", Handle(family)).store("acme", large))["chunks"]
    tight = open_store(tmp_path / "tight", Handle(family), max_chunks_per_tenant=chunks + chunks // 2)
    results = asyncio.run(two(tight, large))
    assert sum(isinstance(r, dict) for r in results) == 1 and sum(isinstance(r, InvalidJobError) for r in results) == 1
    assert points(tight) == chunks


def test_stores_on_two_replicas_at_once_never_overshoot(tmp_path, family, small):
    """Two replicas share the index but not their locks: each sees the other's reservation, so at
    most one of two concurrent stores is admitted (both may be refused; never both stored)."""
    first = open_store(tmp_path, Handle(family), max_documents_per_tenant=1)
    second = DocumentStore(Handle(family), qdrant_path=str(tmp_path / "unused"),
                           limits={**LIMITS, "max_documents_per_tenant": 1})
    OPENED.append(second)
    second.index.close()
    second.index = first.index  # one Qdrant, two replicas' worth of locks

    async def round_() -> list[Any]:
        results = await asyncio.gather(first.store("acme", small), second.store("acme", small),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, dict):
                await first.delete("acme", result["id"])
        return results

    for _ in range(4):
        results = asyncio.run(round_())
        assert sum(isinstance(r, dict) for r in results) <= 1, results
        assert all(isinstance(r, dict | InvalidJobError) for r in results), results


# -- retention ------------------------------------------------------------------------------------
def test_an_expired_document_is_never_returned_even_before_the_sweep(tmp_path, family, small):
    store = open_store(tmp_path, Handle(family), retention_days=30)
    doc = asyncio.run(store.store("acme", small))["id"]
    keep = asyncio.run(store.store("acme", small))["id"]
    backdate(store, "acme", doc, 31)
    assert asyncio.run(store.get("acme", doc)) is None
    assert [d["id"] for d in asyncio.run(store.list_documents("acme", 10))["documents"]] == [keep]
    with pytest.raises(DocumentNotFound) as caught:
        asyncio.run(store.search("acme", [keep, doc], "paragraph", 3))
    assert caught.value.field == "pdf_references[1]"
    assert store.index.count("acme", doc) > 0  # hidden, not yet deleted
    assert asyncio.run(store.delete("acme", doc)) is False  # expired: "not found", and removed all the same
    assert store.index.count("acme", doc) == 0 and store.index.count("acme", keep) > 0


def test_the_sweep_deletes_expired_vectors_per_tenant_retention(tmp_path, family, small):
    store = open_store(tmp_path, Handle(family), retention_days=30, tenants={"short": {"retention_days": 2}})
    old = asyncio.run(store.store("acme", small))["id"]
    young = asyncio.run(store.store("acme", small))["id"]
    short = asyncio.run(store.store("short", small))["id"]
    backdate(store, "acme", old, 40)
    backdate(store, "acme", young, 3)  # within acme's 30 days
    backdate(store, "short", short, 3)  # past short's 2 days
    assert asyncio.run(store.sweep()) == 2
    assert store.index.count("acme", old) == 0 and store.index.count("short", short) == 0
    assert store.index.count("acme", young) > 0 and asyncio.run(store.get("acme", young)) is not None
    assert asyncio.run(store.list_documents("short", 10))["usage"]["retention_days"] == 2


def test_the_replicas_sweep_runs_in_the_background_and_stops_with_it(tmp_path, family, small):
    async def replica() -> None:
        # Serve builds the deployment on the replica's event loop: the sweep starts with it.
        store = DocumentStore(Handle(family), qdrant_path=str(tmp_path / "qdrant"),
                              limits={**LIMITS, "sweep_seconds": 0.05})
        OPENED.append(store)
        task = store._sweeper
        assert task is not None and not task.done()
        doc = (await store.store("acme", small))["id"]
        backdate(store, "acme", doc, 31)
        for _ in range(200):
            if store.index.count("acme", doc) == 0:
                break
            await asyncio.sleep(0.05)
        assert store.index.count("acme", doc) == 0 and store.index._record("acme", doc) is None
        # Serve stops the replica: it awaits __del__ (a coroutine function; the class has none of its own,
        # so the garbage collector never calls it).
        assert "__del__" not in vars(DocumentStore) and inspect.iscoroutinefunction(store.__del__)
        await store.__del__()
        assert task.done() and task.cancelled()
        assert store.closed and store.index.closed and store._sweeper is None
        await store.__del__()  # a second close is harmless
        store.close()

    asyncio.run(replica())
    from qdrant_client import QdrantClient

    QdrantClient(path=str(tmp_path / "qdrant")).close()  # the local-mode file lock was released


# -- delete ------------------------------------------------------------------------------------
def test_delete_is_idempotent_and_blind_to_other_tenants(tmp_path, family, small):
    store = open_store(tmp_path, Handle(family))
    doc = asyncio.run(store.store("acme", small))["id"]
    assert asyncio.run(store.delete("globex", doc)) is False  # another tenant's id: like an unknown one
    assert asyncio.run(store.delete("globex", "0" * 32)) is False
    assert asyncio.run(store.get("acme", doc)) is not None
    assert asyncio.run(store.delete("acme", doc)) is True
    assert asyncio.run(store.delete("acme", doc)) is False  # already deleted
    assert asyncio.run(store.delete("acme", "not/an/id")) is False
    assert points(store) == 0 and asyncio.run(store.list_documents("acme", 10))["usage"]["documents"] == 0
