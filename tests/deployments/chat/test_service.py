"""The chat service in process: tools run before the provider, their passages reach the model
fenced in a user message of their own (never the system message) and come back as a ``Retrieved``
event, the stream ends with one ``Usage``, a missing key is refused before any call, prompt
enhancement, the Local provider's errors through a handle, and the SDK clients closed when the
replica stops. (The fencing itself, against injections: ``test_passages.py``.)"""

from __future__ import annotations

import asyncio

import pytest

from deployments.chat.messages import ChatJob, ChatTurn, Retrieved, Source, TextDelta, Usage
from deployments.chat.passages import MAX_CONTEXT_CHARS, PASSAGE_RULE, fit, passages_message, system_message
from deployments.chat.service import ChatService, LocalProvider
from deployments.errors import DocumentNotFound, InvalidJobError, VendorError
from tests.support.handles import Method, Stream


class _Documents:
    """Stands in for the document store's handle: the tenant's documents, by id."""

    def __init__(self, docs: dict[tuple[str, str], list[Source]]):
        self.calls: list[tuple] = []

        async def search(tenant, ids, query, limit):
            self.calls.append((tenant, tuple(ids), query, limit))
            out = []
            for i, doc in enumerate(ids):
                if (tenant, doc) not in docs:
                    raise DocumentNotFound(f"pdf_references[{i}]")
                out += docs[(tenant, doc)]
            return out[:limit]

        self.search = Method(search)


def _job(**kw) -> ChatJob:
    base = dict(request_id="r1", tenant="tenant-a", provider="OpenAI", model="gpt-4o-mini", temperature=0.2,
                system="Be brief.", turns=(ChatTurn("user", "where do penguins nest?"),), max_tokens=64)
    return ChatJob(**{**base, **kw})


async def _events(service: ChatService, job: ChatJob) -> list:
    return [event async for event in service.stream(job)]


PASSAGE = Source(kind="document", text="Penguins nest on volcanic rock.", score=0.9, document_id="doc1", chunk=0, page=3)


def test_db_search_passages_reach_the_model_and_the_client(fake):
    fake.reset()
    docs = _Documents({("tenant-a", "doc1"): [PASSAGE]})
    service = ChatService(documents=docs, vendors=fake.vendor_settings())
    events = asyncio.run(_events(service, _job(documents=("doc1",), context_chunks=3)))
    assert events[0] == Retrieved((PASSAGE,))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "echo: where do penguins nest?"
    assert isinstance(events[-1], Usage) and sum(isinstance(e, Usage) for e in events) == 1
    assert docs.calls == [("tenant-a", ("doc1",), "where do penguins nest?", 3)]
    messages = fake.requests("openai")[0].body["messages"]
    assert messages[0] == {"role": "system", "content": f"Be brief.\n\n{PASSAGE_RULE}"}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert '<passage n="1" source="document doc1, page 3">\nPenguins nest on volcanic rock.\n</passage>' in (
        messages[1]["content"])
    assert messages[-1] == {"role": "user", "content": "where do penguins nest?"}


def test_another_tenants_document_is_unknown(fake):
    docs = _Documents({("tenant-a", "doc1"): [PASSAGE]})
    service = ChatService(documents=docs, vendors=fake.vendor_settings())
    with pytest.raises(DocumentNotFound) as info:
        asyncio.run(_events(service, _job(tenant="tenant-b", documents=("doc1",))))
    assert info.value.field == "pdf_references[0]"


def test_web_search_then_the_model(fake):
    fake.reset()
    service = ChatService(vendors=fake.vendor_settings())
    reply = asyncio.run(service.chat(_job(internet_search=True)))
    assert reply.sources and all(s.kind == "web" for s in reply.sources)
    messages = fake.requests("openai")[0].body["messages"]
    assert fake.requests("tavily") and "&lt;https://example.com/" in messages[1]["content"]
    assert "example.com" not in messages[0]["content"]  # the system message holds no passage
    assert reply.usage.completion_tokens == 5


def test_a_vendor_without_a_key_is_refused_before_any_call(fake):
    fake.reset()
    service = ChatService(vendors=fake.vendor_settings(anthropic_api_key=None))
    with pytest.raises(VendorError) as info:
        asyncio.run(service.chat(_job(provider="ClaudeAI", model="claude-haiku-4-5")))
    assert info.value.reason == "credentials" and fake.requests("anthropic") == []
    with pytest.raises(VendorError) as info:
        asyncio.run(ChatService(vendors=fake.vendor_settings(tavily_api_key=None)).chat(_job(internet_search=True)))
    assert info.value.vendor == "Tavily" and info.value.reason == "credentials"


def test_enhance_returns_one_clean_line(fake):
    fake.reset()
    reply = asyncio.run(ChatService(vendors=fake.vendor_settings()).enhance(
        "OpenAI", "gpt-4o-mini", "Rewrite.", '  "a cat\n\n on a mat" ', 40, 0.5))
    assert reply.text == 'echo: "a cat on a mat'  # one line; the outer quote stripped
    body = fake.requests("openai")[0].body
    assert body["messages"][0] == {"role": "system", "content": "Rewrite."}


def test_context_is_bounded_and_absent_without_sources():
    assert system_message("sys", ()) == "sys" and system_message(None, ()) is None
    many = tuple(Source(kind="document", text="x" * 5000, document_id="d", page=1) for _ in range(20))
    kept = fit(many)  # what the client is told the model saw: exactly the passages in the message
    text = passages_message(kept)
    assert len(text) <= MAX_CONTEXT_CHARS + 500 and 4 <= len(kept) < 6
    assert f'<passage n="{len(kept)}"' in text and f'<passage n="{len(kept) + 1}"' not in text



class _LLM:
    def __init__(self, stream):
        self.stream = stream
        self.generate = Method(lambda call: self.stream)

    def options(self, **_):
        return self


def test_local_provider_passes_job_errors_and_cancels_on_close():
    bad = Stream([], InvalidJobError("history", "too long"))
    with pytest.raises(InvalidJobError):
        asyncio.run(_collect(LocalProvider(_LLM(bad))))
    broken = Stream([TextDelta("a")], RuntimeError("replica died"))
    with pytest.raises(VendorError) as info:
        asyncio.run(_collect(LocalProvider(_LLM(broken))))
    assert info.value.reason == "unavailable" and "died" not in info.value.public
    long = Stream([TextDelta("a"), TextDelta("b"), TextDelta("c")])

    async def first_then_close():
        gen = LocalProvider(_LLM(long)).stream(_job().__class__ and None)  # the call object is not inspected
        await gen.__anext__()
        await gen.aclose()

    asyncio.run(first_then_close())
    assert long.cancelled


async def _collect(provider):
    return [e async for e in provider.stream(None)]
