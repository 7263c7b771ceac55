"""build_chat_job: either request shape into a ChatJob; history rules with the turn index;
provider/model checks; limits at the max and one past; images from data: URIs (no network); tools."""

from __future__ import annotations

import asyncio
import base64
import io
import random

import pytest
from PIL import Image

from deployments.chat.messages import ChatJob
from ingress.chat_jobs import ChatLimits, ProviderModels, build_chat_job, image_urls, provider_models, redact_chat
from ingress.contract.errors import InputFetchError, ValidationFailed
from ingress.contract.schemas.chat import ChatRequest, parse_chat_request
from ingress.inputs import FetchLimits
from ingress.inputs.decoding import ImageLoader
from ingress.inputs.images import read_header
from ingress.wiring.registry import ChatConfig, ProviderConfig

PROVIDERS = {
    "OpenAI": ProviderModels(("gpt-4o", "gpt-3.5-turbo-0125"), vision_models=("gpt-4o",), default_model="gpt-4o"),
    "ClaudeAI": ProviderModels(("claude-3-haiku", "claude-3-opus")),
    "Local": ProviderModels(("tiny-chat",)),
}
FETCH = FetchLimits()


def _png(size) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


PNG_4x3 = _png((4, 3))


def png_uri(width: int = 8, height: int = 6, color=(200, 10, 10)) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content) -> dict:
    return {"role": "assistant", "content": content}


def system(content) -> dict:
    return {"role": "system", "content": content}


def request(**fields) -> ChatRequest:
    raw = {"llm": "OpenAI", "history": [user("Hello?")]}
    raw.update(fields)
    return parse_chat_request(raw)


def build(req: ChatRequest, limits: ChatLimits | None = None, fetch: FetchLimits = FETCH,
          providers: dict[str, ProviderModels] | None = None) -> ChatJob:
    return asyncio.run(build_chat_job(req, "tenant-a", "req-1", PROVIDERS if providers is None else providers,
                                      limits or ChatLimits(), ImageLoader(fetch)))


def refused(req: ChatRequest, limits: ChatLimits | None = None, **kwargs) -> str:
    with pytest.raises(ValidationFailed) as info:
        build(req, limits, **kwargs)
    return info.value.message


# --- both shapes end to end ---------------------------------------------------------------------


def test_seed_shape_into_a_job():
    req = request(
        llm="ClaudeAI", llm_model="claude-3-opus", temperature=0.2, system_msg="Be brief.",
        history=[user("What is in doc 1?"), assistant("A table."), user("And doc 2?")],
        enable_tool=True, tools={"tool_name": "QdrantDB", "tool_type": "DBSearch", "pdf_references": ["d1", "d2", "d1"]},
    )
    job = build(req)
    assert (job.request_id, job.tenant, job.provider, job.model, job.temperature) == (
        "req-1", "tenant-a", "ClaudeAI", "claude-3-opus", 0.2)
    assert job.system == "Be brief." and job.max_tokens == 1024
    assert [(t.role, t.text, t.images) for t in job.turns] == [
        ("user", "What is in doc 1?", ()), ("assistant", "A table.", ()), ("user", "And doc 2?", ())]
    assert job.documents == ("d1", "d2") and job.internet_search is False and job.context_chunks == 4


def test_second_shape_into_a_job_with_images():
    req = request(
        history=[
            system({"text": "You are terse."}),
            user({"text": "What colour?", "image_data": [{"url": png_uri(8, 6), "details": "low"}]}),
            assistant({"text": "Red."}),
            user({"text": "And this?", "image_data": [{"url": png_uri(5, 5, (0, 0, 255))}, {"url": png_uri(3, 2)}]}),
        ],
        image_analyze=True, max_tokens=300,
        tools={"tool_list": {"internet_search": True, "search_doc": False, "image_generation": False},
               "number_of_context": 7, "embedding_model": "text-embedding-3-large"},
    )
    job = build(req)
    assert job.provider == "OpenAI" and job.model == "gpt-4o" and job.max_tokens == 300 and job.temperature == 0.7
    assert job.system == "You are terse."
    assert [(t.role, t.text, len(t.images)) for t in job.turns] == [
        ("user", "What colour?", 1), ("assistant", "Red.", 0), ("user", "And this?", 2)]
    first = job.turns[0].images[0]
    assert first.media_type == "image/png" and first.detail == "low"
    decoded = Image.open(io.BytesIO(first.data))
    assert decoded.format == "PNG" and decoded.size == (8, 6) and decoded.convert("RGB").getpixel((0, 0)) == (200, 10, 10)
    second = Image.open(io.BytesIO(job.turns[2].images[0].data)).convert("RGB")
    assert second.size == (5, 5) and second.getpixel((2, 2)) == (0, 0, 255)
    assert job.turns[2].images[1].detail == "auto"
    assert job.internet_search is True and job.documents == () and job.context_chunks == 7


def test_bare_base64_image():
    raw = png_uri(4, 4).split(",", 1)[1]
    job = build(request(image_analyze=True, history=[user({"text": "x", "image_data": [{"url": raw}]})]))
    assert Image.open(io.BytesIO(job.turns[0].images[0].data)).size == (4, 4)


# --- system message ------------------------------------------------------------------------------


def test_system_msg_and_system_turns_are_joined_in_order():
    req = request(system_msg="First.", history=[system("Second."), user("hi"), assistant("yo"),
                                                system({"text": "Third."}), user("ok")])
    job = build(req)
    assert job.system == "First.\n\nSecond.\n\nThird."
    assert [t.role for t in job.turns] == ["user", "assistant", "user"]


def test_no_system_message_and_blank_ones():
    assert build(request()).system is None
    assert build(request(system_msg="  ", history=[system(""), user("hi")])).system is None


def test_system_turn_with_an_image_is_refused():
    message = refused(request(image_analyze=True, history=[system({"text": "s", "image_data": [{"url": png_uri()}]}),
                                                           user("hi")]))
    assert message == "history[0].content.image_data: a system turn carries text only; put images in a user turn"


def test_system_message_bound():
    limits = ChatLimits(max_system_chars=20)
    assert build(request(system_msg="a" * 10, history=[system("b" * 8), user("hi")]), limits).system == "a" * 10 + "\n\n" + "b" * 8
    message = refused(request(system_msg="a" * 10, history=[system("b" * 9), user("hi")]), limits)
    assert message == "system_msg: the system message (system_msg and system turns) has 21 characters; allowed: at most 20"


# --- history rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("history,expected", [
    ([assistant("a"), user("b")], "history[0]: the conversation must start with a user turn, got assistant"),
    ([system("s"), assistant("a"), user("b")], "history[1]: the conversation must start with a user turn, got assistant"),
    ([user("a"), user("b")], "history[1]: expected an assistant turn after the user turn history[0], got user"),
    ([user("a"), assistant("b"), assistant("c"), user("d")],
     "history[2]: expected a user turn after the assistant turn history[1], got assistant"),
    ([user("a"), system("s"), assistant("b"), assistant("c"), user("d")],
     "history[3]: expected a user turn after the assistant turn history[2], got assistant"),
    ([user("a"), assistant("b")], "history[1]: the conversation must end with a user turn (the message to answer), got assistant"),
    ([system("only")], "history: no user turn; send at least one (system turns alone are not a conversation)"),
    ([user("   ")], "history[0].content: a user turn needs text or an image"),
    ([user("a"), assistant(""), user("b")], "history[1].content: an assistant turn needs text"),
    ([user("a"), assistant({"text": "b", "image_data": [{"url": "https://x.test/a.png"}]}), user("c")],
     "history[1].content.image_data: an assistant turn carries text only"),
])
def test_history_rule_violations_name_the_turn(history, expected):
    assert refused(request(history=history, image_analyze=True)) == expected


def test_empty_history_is_refused_by_the_schema():
    with pytest.raises(ValidationFailed, match="^history: is empty; send at least one user turn$"):
        parse_chat_request({"llm": "OpenAI", "history": []})


def test_several_problems_are_reported_together():
    message = refused(request(llm_model="gpt-5", max_tokens=5000, history=[assistant("a"), user("b")]))
    assert message.split("; ")[0].startswith("llm_model: 'gpt-5' is not a OpenAI model")
    assert "max_tokens: 5000 exceeds" in message and "history[0]: the conversation must start" in message


# --- provider and model ----------------------------------------------------------------------------


def test_llm_not_configured_lists_the_configured_ones():
    assert refused(request(llm="GeminiAI")) == (
        "llm: GeminiAI is not available on this deployment; allowed: one of OpenAI, ClaudeAI, Local")


def test_unknown_model_lists_the_providers_models():
    assert refused(request(llm="ClaudeAI", llm_model="gpt-4o")) == (
        "llm_model: 'gpt-4o' is not a ClaudeAI model; allowed: one of claude-3-haiku, claude-3-opus")


def test_missing_model_is_the_providers_default():
    assert build(request(llm="OpenAI")).model == "gpt-4o"
    assert build(request(llm="ClaudeAI")).model == "claude-3-haiku"  # no default_model: the first
    assert build(request(llm="Local")).model == "tiny-chat"


def test_provider_models_from_the_registry():
    config = ChatConfig(providers={"OpenAI": ProviderConfig(models=["a", "b"], vision_models=["b"], default_model="b"),
                                   "ClaudeAI": ProviderConfig(models=["c"])},
                        max_tokens_default=100, max_tokens_max=200)
    assert provider_models(config) == {"OpenAI": ProviderModels(("a", "b"), ("b",), "b", max_image_side=2048),
                                       "ClaudeAI": ProviderModels(("c",), (), "c", max_image_side=1568)}
    config.providers["ClaudeAI"] = ProviderConfig(models=["c"], max_image_side=800)  # an operator's own
    assert provider_models(config)["ClaudeAI"].max_image_side == 800
    limits = ChatLimits.from_config(config, documents_enabled=False)
    assert (limits.max_tokens_default, limits.max_tokens_max, limits.documents_enabled) == (100, 200, False)


def test_provider_models_checks_itself():
    with pytest.raises(ValueError):
        ProviderModels(())
    with pytest.raises(ValueError):
        ProviderModels(("a",), default_model="b")
    with pytest.raises(ValueError):
        ProviderModels(("a",), vision_models=("b",))


# --- limits ------------------------------------------------------------------------------------------


def test_max_tokens_default_and_cap():
    limits = ChatLimits(max_tokens_default=50, max_tokens_max=100)
    assert build(request(), limits).max_tokens == 50
    assert build(request(max_tokens=100), limits).max_tokens == 100
    assert refused(request(max_tokens=101), limits) == "max_tokens: 101 exceeds this deployment's cap; allowed: 1..100"


def test_turn_count_limit():
    history = [user("a"), assistant("b"), user("c")]
    assert len(build(request(history=history), ChatLimits(max_turns=3)).turns) == 3
    assert refused(request(history=history), ChatLimits(max_turns=2)) == "history: 3 entries; allowed: 1..2"


def test_turn_chars_limit():
    limits = ChatLimits(max_turn_chars=10)
    assert build(request(history=[user("x" * 10)]), limits).turns[0].text == "x" * 10
    assert refused(request(history=[user({"text": "x" * 11})]), limits) == "history[0].content: 11 characters; allowed: at most 10"


def test_total_chars_limit():
    limits = ChatLimits(max_total_chars=30)
    history = [user("a" * 10), assistant("b" * 10), user("c" * 5)]
    assert len(build(request(system_msg="s" * 5, history=history), limits).turns) == 3
    assert refused(request(system_msg="s" * 6, history=history), limits) == (
        "history: 31 characters in all (system message and turns); allowed: at most 30")


def test_images_per_request_limit():
    three = {"text": "x", "image_data": [{"url": png_uri(2, 2)}] * 3}
    two = {"text": "x", "image_data": [{"url": png_uri(2, 2)}] * 2}
    at_max = [user(three), assistant("ok"), user(three), assistant("ok"), user(two)]
    job = build(request(image_analyze=True, history=at_max))
    assert sum(len(t.images) for t in job.turns) == 8
    message = refused(request(image_analyze=True, history=[*at_max[:-1], user(three)]))
    assert message == "history: 9 images in all; allowed: at most 8 per request"


def test_images_per_turn_limit_of_the_deployment():
    two = {"text": "x", "image_data": [{"url": png_uri(2, 2)}] * 2}
    limits = ChatLimits(max_images_per_turn=1)
    assert refused(request(image_analyze=True, history=[user(two)]), limits) == (
        "history[0].content: 2 images; allowed: at most 1 per turn")


def test_chat_limits_check_themselves():
    with pytest.raises(ValueError, match="max_turns must be 0..100"):
        ChatLimits(max_turns=101)
    with pytest.raises(ValueError, match="max_tokens_default"):
        ChatLimits(max_tokens_default=10, max_tokens_max=5)
    with pytest.raises(ValueError, match="context_chunks_default"):
        ChatLimits(context_chunks_default=21)


# --- images --------------------------------------------------------------------------------------


def test_images_without_image_analyze_are_refused():
    req = request(history=[user({"text": "look", "image_data": [{"url": png_uri()}]})])
    assert refused(req) == ("history[0].content.image_data: images are read only with image_analyze: true; "
                            "set image_analyze: true, or leave image_data out")


def test_a_model_that_cannot_read_images():
    req = request(llm_model="gpt-3.5-turbo-0125", image_analyze=True,
                  history=[user({"text": "look", "image_data": [{"url": png_uri()}]})])
    assert refused(req) == ("llm_model: gpt-3.5-turbo-0125 cannot read images (image_analyze: true with images); "
                            "OpenAI models that can: gpt-4o")
    assert "ClaudeAI models that can: none on this deployment" in refused(
        request(llm="ClaudeAI", image_analyze=True, history=[user({"text": "l", "image_data": [{"url": png_uri()}]})]))


def test_image_analyze_without_images_is_fine_on_any_model():
    assert build(request(llm_model="gpt-3.5-turbo-0125", image_analyze=True)).turns[0].images == ()


def test_a_non_image_data_uri_names_its_field():
    not_image = "data:image/png;base64," + base64.b64encode(b"just some text, not a picture").decode()
    req = request(image_analyze=True, history=[user({"text": "x", "image_data": [{"url": png_uri()}, {"url": not_image}]})])
    with pytest.raises(InputFetchError) as info:
        build(req)
    assert info.value.field == "history[0].content.image_data[1].url"
    assert info.value.message.startswith("history[0].content.image_data[1].url: is not an image in an allowed format")


def test_a_text_data_uri_names_its_field():
    req = request(image_analyze=True, history=[user({"text": "x", "image_data": [{"url": "data:text/plain;base64,aGk="}]})])
    with pytest.raises(InputFetchError, match=r"^history\[0\]\.content\.image_data\[0\]\.url: data URI media type 'text/plain'"):
        build(req)


def test_an_oversized_image_names_its_field():
    big = png_uri(64, 64)
    req = request(image_analyze=True, history=[user("a"), assistant("b"), user({"text": "x", "image_data": [{"url": big}]})])
    with pytest.raises(InputFetchError) as info:
        build(req, fetch=FetchLimits(max_bytes=100))
    assert info.value.message == "history[2].content.image_data[0].url: image exceeds the limit of 100 bytes"
    with pytest.raises(InputFetchError, match="is 64x64 = 4096 pixels; the limit is 1000"):
        build(req, fetch=FetchLimits(max_pixels=1000))


def test_large_images_are_shrunk_and_fall_back_to_jpeg():
    rng = random.Random(7)
    noisy = Image.frombytes("RGB", (600, 400), bytes(rng.randrange(256) for _ in range(600 * 400 * 3)))
    out = io.BytesIO()
    noisy.save(out, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    req = request(image_analyze=True, history=[user({"text": "x", "image_data": [{"url": uri}]})])
    # 400x266 noise: PNG ~310 kB, JPEG q90 ~80 kB, q75 ~50 kB; 600x400: q75 ~145 kB.
    image = build(req, ChatLimits(max_image_side=400, max_image_bytes=100_000)).turns[0].images[0]
    decoded = Image.open(io.BytesIO(image.data))
    assert image.media_type == "image/jpeg" and decoded.format == "JPEG" and decoded.size == (400, 266)
    lower = build(req, ChatLimits(max_image_side=400, max_image_bytes=70_000)).turns[0].images[0]
    assert len(lower.data) <= 70_000 < len(image.data) and Image.open(io.BytesIO(lower.data)).size == (400, 266)
    shrunk = build(req, ChatLimits(max_image_side=600, max_image_bytes=70_000)).turns[0].images[0]
    assert Image.open(io.BytesIO(shrunk.data)).size[0] < 600 and len(shrunk.data) <= 70_000
    png = build(req, ChatLimits(max_image_side=300, max_image_bytes=200_000)).turns[0].images[0]
    assert png.media_type == "image/png" and Image.open(io.BytesIO(png.data)).size == (300, 200)


def test_image_urls_in_text():
    text = ("see https://x.test/a.PNG, and (https://x.test/b.jpg) plus https://x.test/page.html "
            "https://x.test/c.webp?size=2 https://x.test/a.PNG http://x.test/d.jpeg.")
    assert image_urls(text) == ["https://x.test/a.PNG", "https://x.test/b.jpg", "https://x.test/c.webp?size=2",
                                "http://x.test/d.jpeg"]
    assert image_urls("no links here") == []


def test_seed_shape_image_urls_are_fetched_only_with_image_analyze(monkeypatch):
    calls: list[tuple[str, str]] = []

    async def fake_fetch(self, value, field):
        calls.append((value, field))
        return read_header(PNG_4x3, field, FETCH)

    monkeypatch.setattr(ImageLoader, "fetch", fake_fetch)
    history = [user("what is https://x.test/cat.png and https://x.test/dog.jpg?"), assistant("pets"),
               user("and https://x.test/page")]
    job = build(request(image_analyze=True, history=history))
    assert calls == [("https://x.test/cat.png", "history[0].content (image URL 1)"),
                     ("https://x.test/dog.jpg", "history[0].content (image URL 2)")]
    assert len(job.turns[0].images) == 2 and job.turns[2].images == ()
    assert job.turns[0].text == history[0]["content"]  # the URLs stay in the text
    calls.clear()
    job = build(request(history=history))
    assert calls == [] and all(t.images == () for t in job.turns)


def test_a_failing_image_cancels_the_others(monkeypatch):
    started, cancelled = [], []

    async def fake_fetch(self, value, field):
        started.append(field)
        if value == "bad":
            raise InputFetchError(field, "is broken")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(field)
            raise
        return read_header(PNG_4x3, field, FETCH)

    monkeypatch.setattr(ImageLoader, "fetch", fake_fetch)
    req = request(image_analyze=True, history=[user({"text": "x", "image_data": [{"url": "slow"}, {"url": "bad"}]})])
    with pytest.raises(InputFetchError, match=r"image_data\[1\]\.url: is broken"):
        build(req)
    assert cancelled == ["history[0].content.image_data[0].url"]


# --- tools -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tools,internet,documents", [
    ({"tool_name": "Tavily", "tool_type": "InternetSearch"}, True, ()),
    ({"tool_name": "Tavily"}, True, ()),
    ({"tool_type": "InternetSearch"}, True, ()),
    ({"tool_name": "QdrantDB", "tool_type": "DBSearch", "pdf_references": ["a"]}, False, ("a",)),
    ({"tool_type": "DBSearch", "pdf_references": ["a", "b"]}, False, ("a", "b")),
    ({"tool_list": {"internet_search": True, "search_doc": True}, "pdf_references": ["a"]}, True, ("a",)),
    ({"tool_list": {"internet_search": False, "search_doc": False}, "number_of_context": 3}, False, ()),
    ({}, False, ()),
])
def test_tools_in_both_shapes(tools, internet, documents):
    job = build(request(enable_tool=True, tools=tools))
    assert (job.internet_search, job.documents) == (internet, documents)


def test_tools_without_enable_tool_run():
    assert build(request(tools={"tool_name": "Tavily"})).internet_search is True


def test_enable_tool_false_with_a_tool_turned_on():
    message = refused(request(enable_tool=False, tools={"tool_list": {"internet_search": True, "search_doc": True},
                                                        "pdf_references": ["a"]}))
    assert message == ("enable_tool: false, but tools turns on the internet search and the document search; "
                       "set enable_tool: true, or leave tools out")
    assert build(request(enable_tool=False, tools={"tool_list": {"internet_search": False}})).internet_search is False


def test_mismatched_tool_pair():
    assert refused(request(tools={"tool_name": "Tavily", "tool_type": "DBSearch", "pdf_references": ["a"]})).startswith(
        "tools.tool_type: DBSearch does not go with tool_name Tavily; allowed: Tavily with InternetSearch, "
        "QdrantDB with DBSearch")


def test_both_tool_shapes_at_once():
    assert refused(request(tools={"tool_name": "Tavily", "tool_list": {"internet_search": True}})) == (
        "tools: send one shape: tool_name/tool_type (one tool) or tool_list, not both")


@pytest.mark.parametrize("tools", [{"tool_name": "QdrantDB"}, {"tool_type": "DBSearch", "pdf_references": []},
                                   {"tool_list": {"search_doc": True}}])
def test_document_search_needs_references(tools):
    assert refused(request(tools=tools)) == (
        "tools.pdf_references: the document search (DBSearch / search_doc) needs at least one document id from pdfVectorStore")


@pytest.mark.parametrize("tools", [{"tool_name": "Tavily", "pdf_references": ["a"]},
                                   {"tool_list": {"internet_search": True}, "pdf_references": ["a"]},
                                   {"pdf_references": ["a"]}])
def test_references_with_the_document_search_off(tools):
    assert refused(request(tools=tools)).startswith("tools.pdf_references: given, but the document search is off")


def test_tool_limits_of_the_deployment():
    limits = ChatLimits(max_pdf_references=2, max_context_chunks=5, context_chunks_default=3)
    tools = {"tool_type": "DBSearch", "pdf_references": ["a", "b"], "number_of_context": 5}
    job = build(request(tools=tools), limits)
    assert job.documents == ("a", "b") and job.context_chunks == 5
    assert build(request(tools={"tool_type": "DBSearch", "pdf_references": ["a"]}), limits).context_chunks == 3
    message = refused(request(tools={**tools, "pdf_references": ["a", "b", "c"], "number_of_context": 6}), limits)
    assert message == "tools.pdf_references: 3 ids; allowed: at most 2; tools.number_of_context: 6; allowed: 1..5"


def test_tools_not_enabled_on_the_deployment():
    assert refused(request(tools={"tool_name": "Tavily"}), ChatLimits(internet_search_enabled=False)) == (
        "tools: the internet search is not enabled on this deployment")
    assert refused(request(tools={"tool_name": "QdrantDB", "pdf_references": ["a"]}), ChatLimits(documents_enabled=False)) == (
        "tools: the document search is not enabled on this deployment")


# --- echo ----------------------------------------------------------------------------------------------


def test_redact_chat_replaces_inline_images_and_keeps_urls():
    inline = png_uri()
    req = request(image_analyze=True, system_msg="s", history=[user({"text": "x", "image_data": [
        {"url": inline}, {"url": "https://bob:pw@x.test/a.png?token=abc&size=2", "details": "high"}]})],
        tools={"tool_list": {"internet_search": True}})
    echo = redact_chat(req)
    images = echo["history"][0]["content"]["image_data"]
    assert images == [{"url": f"<inline image, {len(inline)} characters>", "details": "auto"},
                      {"url": "https://x.test/a.png?token=REDACTED&size=2", "details": "high"}]
    assert echo["system_msg"] == "s" and echo["llm"] == "OpenAI" and echo["tools"]["tool_list"]["internet_search"] is True
    assert inline not in str(echo)
    assert req.history[0].content.image_data[0].url == inline  # type: ignore[union-attr]  # the request is untouched
