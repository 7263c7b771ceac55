"""The document store: PDF → chunks → embedding deployment (a real EmbeddingFamily behind a handle
shim) → Qdrant local mode; tenancy, slices, concurrent stores, and no half-indexed documents."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from deployments.documents.service import DocumentStore, cut_query
from deployments.errors import DocumentNotFound, InvalidJobError, ModelError
from deployments.families.embedding import EmbeddingFamily
from tests.deployments.documents.test_pdf import make_pdf

SLICE = 4


class Method:
    """``handle.embed``: ``.remote(texts)`` gives an awaitable, like a Serve DeploymentResponse."""

    def __init__(self, call: Callable[[list[str]], Awaitable[Any]]):
        self.call = call
        self.sizes: list[int] = []

    def remote(self, texts: list[str]) -> Awaitable[Any]:
        self.sizes.append(len(texts))
        return self.call(texts)


class Handle:
    """A stand-in for the embedding deployment's DeploymentHandle around a real EmbeddingFamily."""

    def __init__(self, family: EmbeddingFamily, fail_on: int | None = None, hang_on: int | None = None,
                 error: Exception | None = None):
        self.family = family
        self.fail_on = fail_on
        self.hang_on = hang_on
        self.error = error or RuntimeError("the embedding replica died")
        self.embed = Method(self._embed)

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        call = len(self.embed.sizes) - 1  # this call's position (remote() has counted it)
        if call == self.fail_on:
            raise self.error
        if call == self.hang_on:
            await asyncio.sleep(3600)
        return await self.family.embed(texts)


class RayWrapped(Exception):
    """How a Serve call surfaces a replica's exception: the original is ``.cause``."""

    def __init__(self, cause: Exception):
        super().__init__("RayTaskError")
        self.cause = cause


def paragraphs(page: int, count: int = 6) -> str:
    return "\n\n".join(f"Page {page} paragraph {i}: the studio stores vectors for every chunk of text it reads."
                       for i in range(count))


@pytest.fixture(scope="module")
def pdf() -> bytes:
    return make_pdf([paragraphs(1), paragraphs(2), paragraphs(3)])


OPENED: list[DocumentStore] = []


def open_store(tmp_path: Path, handle: Any, **limits: Any) -> DocumentStore:
    store = DocumentStore(handle, qdrant_path=str(tmp_path / "qdrant"),
                          limits={"chunk_chars": 200, "chunk_overlap": 40, "embed_slice": SLICE, **limits})
    OPENED.append(store)
    return store


@pytest.fixture(autouse=True)
def _close_stores():
    yield
    while OPENED:
        OPENED.pop().close()


def total_points(store: DocumentStore) -> int:
    if store.index.dimension() is None:
        return 0
    return store.index.client.count(store.index.collection, exact=True).count


def test_store_get_search(tmp_path, family, pdf):
    handle = Handle(family)
    store = open_store(tmp_path, handle)

    async def go():
        stored = await store.store("acme", pdf)
        return stored, await store.get("acme", stored["id"])

    stored, described = asyncio.run(go())
    assert re.fullmatch(r"[0-9a-f]{32}", stored["id"])
    assert stored["pages"] == 3 and stored["chunks"] > 3 and stored["characters"] > 500
    assert described is not None and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", described.pop("created"))
    assert described == {"id": stored["id"], "chunks": stored["chunks"], "pages": 3, "name": "document.pdf",
                         "size": len(pdf)}
    assert (stored["name"], stored["size"]) == ("document.pdf", len(pdf))
    assert total_points(store) == stored["chunks"]
    # embedded in slices: never more than SLICE texts per call to the deployment
    assert handle.embed.sizes == [SLICE] * (stored["chunks"] // SLICE) + ([stored["chunks"] % SLICE]
                                                                           if stored["chunks"] % SLICE else [])
    # searching a chunk's own text finds that chunk first (the tiny model is not semantic, but identical
    # text gives an identical vector)
    points, _ = store.index.client.scroll(store.index.collection, limit=100, with_payload=True)
    target = next(p.payload for p in points if p.payload and p.payload["page"] == 2)
    sources = asyncio.run(store.search("acme", [stored["id"]], target["text"], 3))
    assert len(sources) == 3
    best = sources[0]
    assert (best.kind, best.document_id, best.text, best.page, best.chunk) == (
        "document", stored["id"], target["text"], 2, target["chunk"])
    assert best.score is not None and math.isclose(best.score, 1.0, abs_tol=1e-4)
    asyncio.run(store.check_health())


def test_tenant_isolation(tmp_path, family, pdf):
    store = open_store(tmp_path, Handle(family))

    async def go():
        a = await store.store("tenant-a", pdf)
        b = await store.store("tenant-b", make_pdf(["Tenant B has a document of its own about other things."]))
        return a["id"], b["id"]

    a_id, b_id = asyncio.run(go())
    assert asyncio.run(store.get("tenant-b", a_id)) is None
    with pytest.raises(DocumentNotFound) as caught:
        asyncio.run(store.search("tenant-b", [b_id, a_id], "vectors", 3))
    assert caught.value.field == "pdf_references[1]" and caught.value.error_type == "NotFound"
    with pytest.raises(DocumentNotFound) as unknown:
        asyncio.run(store.search("tenant-b", [b_id, "0" * 32], "vectors", 3))
    assert unknown.value.field == "pdf_references[1]" and unknown.value.message == caught.value.message
    assert asyncio.run(store.delete("tenant-b", a_id)) is False
    # B's own search sees only B's document
    sources = asyncio.run(store.search("tenant-b", [b_id], "vectors", 10))
    assert sources and {s.document_id for s in sources} == {b_id}
    # A's document is untouched
    assert asyncio.run(store.get("tenant-a", a_id)) is not None
    assert {s.document_id for s in asyncio.run(store.search("tenant-a", [a_id], "vectors", 20))} == {a_id}


def test_search_is_restricted_to_the_given_ids(tmp_path, family, pdf):
    store = open_store(tmp_path, Handle(family))

    async def go():
        return [(await store.store("acme", pdf))["id"] for _ in range(2)]

    first, second = asyncio.run(go())
    assert {s.document_id for s in asyncio.run(store.search("acme", [second], "paragraph", 20))} == {second}
    both = asyncio.run(store.search("acme", [first, second], "paragraph", 20))
    assert {s.document_id for s in both} == {first, second}


def test_search_inputs(tmp_path, family, pdf):
    store = open_store(tmp_path, Handle(family), max_query_chars=50, max_results=5)
    doc = asyncio.run(store.store("acme", pdf))["id"]
    cases = [([doc], "   ", 3, "query"), ([doc], "fine", 0, "number_of_context"),
             ([doc], "fine", 6, "number_of_context"), ([], "fine", 3, "pdf_references")]
    for ids, query, limit, field in cases:
        with pytest.raises(InvalidJobError) as caught:
            asyncio.run(store.search("acme", ids, query, limit))
        assert caught.value.field == field
    with pytest.raises(DocumentNotFound) as caught:
        asyncio.run(store.search("acme", [doc, "../etc/passwd"], "fine", 3))
    assert caught.value.field == "pdf_references[1]"
    assert len(asyncio.run(store.search("acme", [doc, doc], "fine", 5))) == 5
    assert len(asyncio.run(store.search("acme", [doc], "long " * 100, 5))) == 5  # a long query is cut, not refused


def test_cut_query():
    assert cut_query("  a   b\nc ", 10) == "a b c"
    assert cut_query("alpha beta gamma", 12) == "alpha beta"
    assert cut_query("x" * 30, 10) == "x" * 10


def test_delete_removes_all_points(tmp_path, family, pdf):
    store = open_store(tmp_path, Handle(family))

    async def go():
        return (await store.store("acme", pdf))["id"], (await store.store("acme", pdf))["id"]

    doc, other = asyncio.run(go())
    kept = store.index.count("acme", other)
    assert asyncio.run(store.delete("acme", doc)) is True
    assert store.index.count("acme", doc) == 0 and total_points(store) == kept
    assert asyncio.run(store.get("acme", doc)) is None
    with pytest.raises(DocumentNotFound):
        asyncio.run(store.search("acme", [doc], "anything", 1))
    assert asyncio.run(store.delete("acme", doc)) is False


def test_two_stores_at_once_are_both_fully_indexed(tmp_path, family, pdf):
    store = open_store(tmp_path, Handle(family))
    other_pdf = make_pdf([paragraphs(7, 10), paragraphs(8, 10)])

    async def go():
        return await asyncio.gather(store.store("acme", pdf), store.store("acme", other_pdf))

    first, second = asyncio.run(go())
    assert first["id"] != second["id"]
    for stored in (first, second):
        assert store.index.count("acme", stored["id"]) == stored["chunks"]
    assert total_points(store) == first["chunks"] + second["chunks"]


@pytest.mark.parametrize("fail_on", [0, 1])
def test_a_failed_embed_leaves_nothing_visible(tmp_path, family, pdf, fail_on):
    good = open_store(tmp_path, Handle(family))
    kept = asyncio.run(good.store("acme", pdf))
    good.close()
    handle = Handle(family, fail_on=fail_on)
    store = open_store(tmp_path, handle)
    with pytest.raises(ModelError):
        asyncio.run(store.store("acme", pdf))
    assert len(handle.embed.sizes) == fail_on + 1  # the first slice was written when fail_on == 1
    assert total_points(store) == kept["chunks"]  # only the earlier, complete document
    assert store.index.count("acme", kept["id"]) == kept["chunks"]


def test_a_cancelled_store_leaves_nothing_visible(tmp_path, family, pdf):
    handle = Handle(family, hang_on=1)
    store = open_store(tmp_path, handle)

    async def go():
        task = asyncio.create_task(store.store("acme", pdf))
        while len(handle.embed.sizes) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert total_points(store) == 0


def test_job_errors_of_the_embedder_pass_through(tmp_path, family, pdf):
    error = RayWrapped(InvalidJobError("texts", "texts[0] has 9000 characters; allowed: at most 8000"))
    store = open_store(tmp_path, Handle(family, fail_on=0, error=error))
    with pytest.raises(InvalidJobError) as caught:
        asyncio.run(store.store("acme", pdf))
    assert caught.value.field == "texts"
    assert total_points(store) == 0


def test_malformed_vectors_are_a_model_error(tmp_path, pdf):
    class Broken:
        embed = Method(lambda texts: asyncio.sleep(0, result=[[0.1, 0.2]] * (len(texts) - 1)))

    store = open_store(tmp_path, Broken())
    with pytest.raises(ModelError):
        asyncio.run(store.store("acme", pdf))


def test_pdf_refusals_and_limits_pass_through(tmp_path, family, pdf):
    store = open_store(tmp_path, Handle(family), max_pages=2)
    for data, words in ((b"not a pdf at all", "%PDF-"), (pdf, "at most 2 pages"), (make_pdf([""]), "no extractable")):
        with pytest.raises(InvalidJobError) as caught:
            asyncio.run(store.store("acme", data))
        assert caught.value.field == "url" and words in caught.value.message
    store.close()
    tight = open_store(tmp_path, Handle(family), max_chunks=2)
    with pytest.raises(InvalidJobError) as chunks:
        asyncio.run(tight.store("acme", pdf))
    assert "at most 2 chunks" in chunks.value.message
    assert total_points(tight) == 0


def test_constructor_checks(tmp_path):
    with pytest.raises(ValueError):
        DocumentStore(None)
    with pytest.raises(ValueError):
        DocumentStore(None, qdrant_path=str(tmp_path / "a"), qdrant_url="http://qdrant:6333")
    with pytest.raises(ValueError):
        DocumentStore(None, qdrant_path=str(tmp_path / "b"), limits={"chunk_chars": 100, "chunk_overlap": 60})
    with pytest.raises(ValueError):
        DocumentStore(None, qdrant_path=str(tmp_path / "c"), limits={"no_such_limit": 1})
    store = DocumentStore(None, qdrant_path=str(tmp_path / "d"), limits={"max_pages": 9})
    assert store.info()["limits"]["max_pages"] == 9 and store.info()["qdrant"] == "local"
    store.close()


def test_a_cancelled_store_waiting_for_a_parse_never_runs_one(tmp_path, monkeypatch):
    """Parses wait on the event loop: requests cancelled while they wait (a client gone, an ingress
    timeout) start no parse, and the replica's other calls do not queue behind parses."""
    import threading

    from deployments.documents import service as service_module

    started: list[int] = []
    release = threading.Event()

    def slow_extract(pdf, limits):
        started.append(1)
        release.wait(5)
        raise InvalidJobError("url", "stand-in parse")

    monkeypatch.setattr(service_module, "extract_pages", slow_extract)
    store = DocumentStore(None, qdrant_path=str(tmp_path / "q"), limits={"max_parallel_parses": 1})

    async def scenario():
        first = asyncio.create_task(store.store("acme", b"%PDF-1"))
        waiting = [asyncio.create_task(store.store("acme", b"%PDF-1")) for _ in range(4)]
        await asyncio.sleep(0.2)
        for task in waiting:
            task.cancel()
        assert await store.get("acme", "0" * 32) is None  # answered while a parse runs
        release.set()
        with pytest.raises(InvalidJobError):
            await first
        await asyncio.gather(*waiting, return_exceptions=True)

    asyncio.run(scenario())
    assert started == [1]  # only the first request parsed
