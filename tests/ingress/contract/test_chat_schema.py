"""The chat request schema: both shapes, every bound at its max and one past it, messages that
name the field by its full path; and the document schemas whose ids ``pdf_references`` takes."""

from __future__ import annotations

import pytest

from ingress.contract.errors import ValidationFailed
from ingress.contract.routes.parsing import parse_strict
from ingress.contract.schemas import chat as schema
from ingress.contract.schemas.chat import ChatRequest, TurnContent, field_path, parse_chat_request
from ingress.contract.schemas.documents import DocumentRef, PdfVectorStoreRequest, StoredDocument


def body(**fields) -> dict:
    out = {"llm": "OpenAI", "history": [{"role": "user", "content": "Hello?"}]}
    out.update(fields)
    return out


def refused(raw: dict) -> str:
    with pytest.raises(ValidationFailed) as info:
        parse_chat_request(raw)
    return info.value.message


def turns(n: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(n)]


# --- both shapes -------------------------------------------------------------------------------


def test_seed_shape_parses_with_defaults():
    req = parse_chat_request(body(
        llm="ClaudeAI", llm_model="claude-3-5-sonnet-20240620", system_msg="Be brief.",
        history=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
        enable_tool=True, tools={"tool_name": "QdrantDB", "tool_type": "DBSearch", "pdf_references": ["doc_1", "doc-2"]},
    ))
    assert req.llm == "ClaudeAI" and req.llm_model == "claude-3-5-sonnet-20240620"
    assert req.temperature == 0.7 and req.max_tokens is None and req.image_analyze is False and req.celery is False
    assert [t.content for t in req.history] == ["a", "b", "c"]
    assert req.tools is not None and req.tools.tool_type == "DBSearch" and req.tools.pdf_references == ["doc_1", "doc-2"]


def test_second_shape_parses():
    req = parse_chat_request(body(
        history=[
            {"role": "system", "content": {"text": "You are terse."}},
            {"role": "user", "content": {"text": "What is this?", "image_data": [{"url": "https://x.test/a.png", "details": "low"}]}},
        ],
        image_analyze=True,
        tools={"tool_list": {"internet_search": True, "search_doc": False, "image_generation": False},
               "number_of_context": 5, "pdf_references": [], "embedding_model": "text-embedding-3-large"},
    ))
    system, user = req.history
    assert system.role == "system" and isinstance(system.content, TurnContent) and system.content.text == "You are terse."
    assert isinstance(user.content, TurnContent) and user.content.image_data is not None
    assert user.content.image_data[0].url == "https://x.test/a.png" and user.content.image_data[0].details == "low"
    assert req.tools is not None and req.tools.tool_list is not None
    assert req.tools.tool_list.internet_search is True and req.tools.number_of_context == 5


def test_detail_alias_and_default():
    req = parse_chat_request(body(history=[{"role": "user", "content": {"image_data": [{"url": "u", "detail": "high"},
                                                                                          {"url": "v"}]}}]))
    content = req.history[0].content
    assert isinstance(content, TurnContent) and content.image_data is not None
    assert [d.details for d in content.image_data] == ["high", "auto"]


def test_unknown_fields_are_ignored():
    req = parse_chat_request(body(stream=True, user_id="abc"))
    assert "stream" not in req.model_dump()


def test_flags_take_yes_no_but_not_numbers_or_numeric_strings():
    assert parse_chat_request(body(image_analyze="yes", enable_tool="no")).image_analyze is True
    assert "image_analyze" in refused(body(image_analyze=1))
    assert "temperature" in refused(body(temperature="0.5"))
    assert parse_chat_request(body(max_tokens=64.0)).max_tokens == 64


# --- field paths --------------------------------------------------------------------------------


def test_field_path_drops_union_tags():
    assert field_path(("history", 3, "content", "object", "image_data", 0, "url")) == "history[3].content.image_data[0].url"
    assert field_path(("history", 1, "content", "string")) == "history[1].content"
    assert field_path(()) == "body"


def test_nested_errors_name_the_full_path():
    message = refused(body(history=[{"role": "user", "content": {"image_data": [{"url": ""}]}}]))
    assert message.startswith("history[0].content.image_data[0].url: String should have at least 1 character")
    message = refused(body(history=[{"role": "user", "content": 5}]))
    assert message == "history[0].content: must be a string, or an object {text, image_data} (got 5)"
    assert refused(body(history=[{"role": "tool", "content": "x"}])).startswith("history[0].role: Input should be 'user'")


def test_not_an_object():
    with pytest.raises(ValidationFailed, match="body: must be a JSON object"):
        parse_chat_request([1, 2])


def test_route_parser_accepts_the_model_too():
    """``parse_strict`` (the generation routes' parser) works with ChatRequest: same acceptances."""
    req = parse_strict(ChatRequest, body(tools={"tool_list": {"internet_search": True}}, max_tokens=10))
    assert req.max_tokens == 10
    with pytest.raises(ValidationFailed, match="celery"):
        parse_strict(ChatRequest, body(celery=True))


# --- llm, temperature, max_tokens, celery ---------------------------------------------------------


def test_llm_values():
    for llm in ("OpenAI", "ClaudeAI", "MistralAI", "GeminiAI", "Local"):
        assert parse_chat_request(body(llm=llm)).llm == llm
    message = refused(body(llm="Cohere"))
    assert message.startswith("llm: Input should be 'OpenAI', 'ClaudeAI', 'MistralAI', 'GeminiAI' or 'Local'")
    assert refused({"history": [{"role": "user", "content": "x"}]}).startswith("llm: Field required")


def test_llm_model_charset_and_length():
    assert parse_chat_request(body(llm_model="meta-llama/Llama-3-8B-Instruct")).llm_model == "meta-llama/Llama-3-8B-Instruct"
    assert parse_chat_request(body(llm_model="m" * 128)).llm_model == "m" * 128
    assert "llm_model" in refused(body(llm_model="m" * 129))
    assert "llm_model" in refused(body(llm_model="gpt 4"))


@pytest.mark.parametrize("value,ok", [(0, True), (1, True), (0.35, True), (-0.01, False), (1.01, False)])
def test_temperature_bounds(value, ok):
    if ok:
        assert parse_chat_request(body(temperature=value)).temperature == value
    else:
        assert refused(body(temperature=value)).startswith("temperature: Input should be")


def test_max_tokens_bounds():
    assert parse_chat_request(body(max_tokens=schema.MAX_TOKENS_CAP)).max_tokens == schema.MAX_TOKENS_CAP
    assert refused(body(max_tokens=schema.MAX_TOKENS_CAP + 1)).startswith("max_tokens: Input should be less than or equal")
    assert refused(body(max_tokens=0)).startswith("max_tokens: Input should be greater than or equal to 1")


def test_celery_only_false():
    assert parse_chat_request(body(celery=False)).celery is False
    assert parse_chat_request(body(celery="no")).celery is False
    message = refused(body(celery=True))
    assert message.startswith("celery: chat is answered synchronously (POST chat) or streamed (POST streamChat)")
    assert "celery" in refused(body(celery="yes"))


# --- history bounds ---------------------------------------------------------------------------------


def test_turn_count_bounds():
    assert len(parse_chat_request(body(history=turns(schema.MAX_TURNS - 1))).history) == schema.MAX_TURNS - 1
    assert len(parse_chat_request(body(history=turns(schema.MAX_TURNS))).history) == schema.MAX_TURNS
    assert refused(body(history=turns(schema.MAX_TURNS + 1))) == "history: 101 entries; allowed: 1..100 entries"
    assert refused(body(history=[])) == "history: is empty; send at least one user turn"


def test_turn_chars_bounds_in_both_shapes():
    top = "x" * schema.MAX_TURN_CHARS
    assert parse_chat_request(body(history=[{"role": "user", "content": top}])).history[0].content == top
    assert refused(body(history=[{"role": "user", "content": top + "x"}])).startswith(
        "history[0].content: String should have at most 32000 characters")
    parse_chat_request(body(history=[{"role": "user", "content": {"text": top}}]))
    assert refused(body(history=[{"role": "user", "content": {"text": top + "x"}}])).startswith(
        "history[0].content.text: String should have at most 32000 characters")


def test_system_msg_bounds():
    parse_chat_request(body(system_msg="s" * schema.MAX_SYSTEM_CHARS))
    assert refused(body(system_msg="s" * (schema.MAX_SYSTEM_CHARS + 1))).startswith("system_msg: String should have at most")


def test_images_per_turn_bound():
    images = [{"url": f"https://x.test/{i}.png"} for i in range(schema.MAX_IMAGES_PER_TURN + 1)]
    parse_chat_request(body(history=[{"role": "user", "content": {"image_data": images[:-1]}}]))
    assert refused(body(history=[{"role": "user", "content": {"image_data": images}}])).startswith(
        "history[0].content.image_data: List should have at most 4 items")


def test_image_detail_values():
    assert refused(body(history=[{"role": "user", "content": {"image_data": [{"url": "u", "details": "max"}]}}])).startswith(
        "history[0].content.image_data[0].details: Input should be 'auto', 'low' or 'high'")


# --- tools -------------------------------------------------------------------------------------------


def test_unknown_tool_name_and_type_name_the_allowed_values():
    assert refused(body(tools={"tool_name": "Bing"})).startswith("tools.tool_name: Input should be 'Tavily' or 'QdrantDB'")
    assert refused(body(tools={"tool_type": "WebSearch"})).startswith(
        "tools.tool_type: Input should be 'InternetSearch' or 'DBSearch'")


def test_tool_list_flags_beyond_the_two_we_honour():
    req = parse_chat_request(body(tools={"tool_list": {"internet_search": False, "search_doc": True, "image_generation": False,
                                                       "code_interpreter": "no", "other": None}}))
    assert req.tools is not None and req.tools.tool_list is not None and req.tools.tool_list.search_doc is True
    message = refused(body(tools={"tool_list": {"image_generation": True}}))
    assert message == ("tools.tool_list: flag image_generation cannot be turned on: that tool is not available here; "
                       "only internet_search, search_doc can be (send other flags as false, or leave them out)")
    assert "flag weather cannot be turned on" in refused(body(tools={"tool_list": {"weather": "yes"}}))
    assert "flag weather must be true or false" in refused(body(tools={"tool_list": {"weather": 3}}))
    too_many = {f"flag{i}": False for i in range(schema.MAX_TOOL_FLAGS)}
    assert "at most 32 flags" in refused(body(tools={"tool_list": too_many}))


def test_pdf_references_count_and_id_shape():
    ids = [f"doc{i}" for i in range(schema.MAX_PDF_REFERENCES + 1)]
    parse_chat_request(body(tools={"tool_type": "DBSearch", "pdf_references": ids[:-1]}))
    assert refused(body(tools={"tool_type": "DBSearch", "pdf_references": ids})).startswith(
        "tools.pdf_references: List should have at most 20 items")
    assert parse_chat_request(body(tools={"pdf_references": ["a" * 64]})).tools is not None
    assert refused(body(tools={"pdf_references": ["a" * 65]})).startswith("tools.pdf_references[0]: String should match")
    assert refused(body(tools={"pdf_references": ["../etc"]})).startswith("tools.pdf_references[0]: String should match")


@pytest.mark.parametrize("value,ok", [(1, True), (20, True), (0, False), (21, False)])
def test_number_of_context_bounds(value, ok):
    raw = body(tools={"tool_list": {"search_doc": True}, "pdf_references": ["d1"], "number_of_context": value})
    if ok:
        assert parse_chat_request(raw).tools.number_of_context == value  # type: ignore[union-attr]
    else:
        assert refused(raw).startswith("tools.number_of_context: Input should be")


def test_openapi_schema_documents_the_bounds():
    doc = ChatRequest.model_json_schema()
    history = doc["properties"]["history"]
    assert history["minItems"] == 1 and history["maxItems"] == schema.MAX_TURNS and history["description"]
    defs = doc["$defs"]
    assert defs["TurnContent"]["properties"]["image_data"]["anyOf"][0]["maxItems"] == schema.MAX_IMAGES_PER_TURN
    assert defs["ToolList"]["maxProperties"] == schema.MAX_TOOL_FLAGS
    assert doc["properties"]["celery"]["const"] is False
    for name, prop in doc["properties"].items():
        assert prop.get("description"), name


# --- document schemas ------------------------------------------------------------------------------


def test_pdf_vector_store_url():
    assert PdfVectorStoreRequest.model_validate({"url": "https://x.test/a.pdf"}).url == "https://x.test/a.pdf"
    assert PdfVectorStoreRequest.model_validate({"url": "data:application/pdf;base64,JVBERi0="}).url.startswith("data:")
    for bad in ("ftp://x.test/a.pdf", "data:image/png;base64,AAAA", "", "/etc/passwd"):
        with pytest.raises(ValidationFailed, match="^url: "):
            parse_strict(PdfVectorStoreRequest, {"url": bad})


def test_document_ref_and_output():
    assert DocumentRef.model_validate({"id": "0123abcdef"}).id == "0123abcdef"
    for bad in ("", "a" * 65, "a/b", "a b"):
        with pytest.raises(ValidationFailed, match="^id: "):
            parse_strict(DocumentRef, {"id": bad})
    stored = {"id": "d", "name": "a.pdf", "size": 9, "chunks": 3, "pages": 2, "created": "2025-01-31T12:00:00Z"}
    assert StoredDocument(**stored).model_dump() == stored
    for name in ("   ", "a\x00b", "x" * 201):
        with pytest.raises(ValidationFailed, match="^name: "):
            parse_strict(PdfVectorStoreRequest, {"url": "https://x.test/a.pdf", "name": name})
    assert PdfVectorStoreRequest.model_validate({"url": "https://x.test/a.pdf", "name": " Q1.pdf "}).name == "Q1.pdf"


def test_lax_coercions_are_refused_at_every_depth():
    raw = body(tools={"tool_list": {"search_doc": True}, "pdf_references": ["d"], "number_of_context": "5"})
    assert refused(raw) == "tools.number_of_context: Input should be a valid integer (got '5')"
    raw = body(tools={"tool_list": {"search_doc": True}, "pdf_references": ["d"], "number_of_context": 5.0})
    assert parse_chat_request(raw).tools.number_of_context == 5  # type: ignore[union-attr]
    assert refused(body(tools={"tool_list": {"internet_search": 1}})).startswith(
        "tools.tool_list.internet_search: Input should be a valid boolean")
