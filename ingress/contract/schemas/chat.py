"""Request schema of the ChatBot routes (``POST chat``, ``POST streamChat``): both shapes clients send.

*Seed shape*: ``history`` turns are ``{role: user|assistant, content: "<text>"}``, the system
message is ``system_msg``, and ``tools`` is one tool: ``{tool_name: "Tavily", tool_type:
"InternetSearch"}`` or ``{tool_name: "QdrantDB", tool_type: "DBSearch", pdf_references: [ids]}``.

*Second shape*: a turn's ``content`` is ``{text, image_data: [{url, details}]}``, ``system`` turns
may sit in ``history``, and ``tools`` is ``{tool_list: {internet_search, search_doc, ...: bool},
number_of_context, pdf_references, embedding_model}``.

The two may be mixed turn by turn. This module bounds every field (turns, characters, images,
document ids, ``number_of_context``, ``max_tokens``); the rules between fields (turn order, the
system message, images versus ``image_analyze`` and the model, tools versus ``enable_tool``) and
this deployment's own, possibly tighter, limits are applied by :func:`ingress.chat_jobs.build_chat_job`.
Unknown fields are ignored, as on every route; unknown *values* of known fields are 422s.

:func:`parse_request` validates a body and names each bad field by its full path
(``history[3].content.image_data[0].url``), which ``parse_strict`` (top-level names) cannot.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ingress.contract.errors import ValidationFailed
from ingress.contract.schemas.documents import DocumentId
from ingress.contract.schemas.generation import Flag, _yes_no

#: Absolute bounds (a deployment's :class:`~ingress.chat_jobs.ChatLimits` may only tighten them).
MAX_TURNS = 100  # history entries, system turns included
MAX_TURN_CHARS = 32_000  # one turn's text
MAX_SYSTEM_CHARS = 32_000  # the system message (system_msg and system turns together)
MAX_TOTAL_CHARS = 200_000  # system message and every turn's text together
MAX_IMAGES_PER_TURN = 4
MAX_IMAGES = 8  # per request
MAX_PDF_REFERENCES = 20
MAX_CONTEXT_CHUNKS = 20  # number_of_context
MAX_TOKENS_CAP = 32_768  # max_tokens (the deployment's cap is usually lower)
MAX_IMAGE_CHARS = 30_000_000  # one image value: a URL, or a data: URI / base64 of up to ~20 MiB
MAX_TOOL_FLAGS = 32  # keys of tools.tool_list
#: ``llm_model``: vendor and Hugging Face style names (``gpt-4o``, ``claude-3-5-sonnet-20240620``,
#: ``models/gemini-1.5-pro``, ``meta-llama/Llama-3-8B-Instruct``).
LLM_MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
EMBEDDING_MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"

Provider = Literal["OpenAI", "ClaudeAI", "MistralAI", "GeminiAI", "Local"]
PROVIDERS: tuple[str, ...] = ("OpenAI", "ClaudeAI", "MistralAI", "GeminiAI", "Local")
Role = Literal["user", "assistant", "system"]
ImageDetail = Literal["auto", "low", "high"]
#: Seed-shape tools: each ``tool_name`` has exactly one ``tool_type``.
TOOL_TYPES: dict[str, str] = {"Tavily": "InternetSearch", "QdrantDB": "DBSearch"}
#: ``tools.tool_list`` flags this API can honour; any other flag must be false (or absent).
HONOURED_TOOL_FLAGS: tuple[str, ...] = ("internet_search", "search_doc")


def _chat_is_synchronous(value: Any) -> Any:
    value = _yes_no(value)
    if value is True:
        raise PydanticCustomError(
            "chat_synchronous",
            "chat is answered synchronously (POST chat) or streamed (POST streamChat), never queued; "
            "send celery: false or leave it out",
        )
    return value


#: ``celery`` on chat: only false (the chat routes have no async tasks).
NoCelery = Annotated[Literal[False], BeforeValidator(_chat_is_synchronous)]


class ImageData(BaseModel):
    """An image in a user turn."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    url: str = Field(
        min_length=1, max_length=MAX_IMAGE_CHARS,
        description="The image: an http(s) URL (fetched under the input rules: public addresses only, size, pixel "
        "and time caps), a `data:image/...;base64,` URI or bare base64; PNG, JPEG or WEBP.",
    )
    details: ImageDetail = Field(
        "auto", validation_alias=AliasChoices("details", "detail"),
        description="How closely the model looks (OpenAI's image detail: auto, low, high; others ignore it). "
        "Alias: detail.",
    )


class TurnContent(BaseModel):
    """A turn's content as an object: text and images."""

    model_config = ConfigDict(extra="ignore")

    text: str | None = Field(None, max_length=MAX_TURN_CHARS, description=f"The turn's text, ≤ {MAX_TURN_CHARS} characters.")
    image_data: list[ImageData] | None = Field(
        None, max_length=MAX_IMAGES_PER_TURN,
        description=f"User turns: images for the model (≤ {MAX_IMAGES_PER_TURN} per turn, ≤ {MAX_IMAGES} per "
        "request); read only with `image_analyze: true` and a vision model.",
    )


def _content_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "string"
    if isinstance(value, (dict, TurnContent)):
        return "object"
    return None


#: Union member tags; they appear in pydantic's error locations and are dropped from field paths.
_CONTENT_TAGS = frozenset({"string", "object"})

TurnText = Annotated[str, StringConstraints(max_length=MAX_TURN_CHARS)]
Content = Annotated[
    Annotated[TurnText, Tag("string")] | Annotated[TurnContent, Tag("object")],
    Discriminator(
        _content_kind, custom_error_type="content_shape",
        custom_error_message="must be a string, or an object {text, image_data}",
    ),
]


class ChatMessage(BaseModel):
    """One entry of ``history``."""

    model_config = ConfigDict(extra="ignore")

    role: Role = Field(description="user, assistant, or system (system turns are taken as the system message).")
    content: Content = Field(
        description=f"The text (≤ {MAX_TURN_CHARS} characters), or {{text, image_data: [{{url, details}}]}}. In a "
        "text, image URLs ending in .png/.jpg/.jpeg/.webp are also read when `image_analyze` is true."
    )


class ToolList(BaseModel):
    """Tool switches. Only ``internet_search`` and ``search_doc`` can be turned on;
    any other flag is accepted only as false (a true one is a 422, never silently ignored)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "maxProperties": MAX_TOOL_FLAGS,
            "additionalProperties": {"anyOf": [
                {"const": False}, {"type": "null"},
                {"type": "string", "pattern": r"^\s*([Nn][Oo]|[Ff][Aa][Ll][Ss][Ee]|0)\s*$"},
            ]},
        },
    )

    internet_search: Flag = Field(False, description="Search the web (Tavily) and give the results to the model.")
    search_doc: Flag = Field(
        False, description="Search the documents in `pdf_references` and give the best chunks to the model."
    )

    @model_validator(mode="after")
    def _only_honoured_flags(self) -> ToolList:
        extra = self.model_extra or {}
        if len(extra) + len(HONOURED_TOOL_FLAGS) > MAX_TOOL_FLAGS:
            raise PydanticCustomError("too_many_flags", "at most {n} flags", {"n": MAX_TOOL_FLAGS})
        allowed = ", ".join(HONOURED_TOOL_FLAGS)
        for name, raw in extra.items():
            value = _yes_no(raw)
            if value is None or value is False:
                continue
            shown = name if len(name) <= 64 else name[:61] + "..."
            if value is True:
                raise PydanticCustomError(
                    "tool_not_supported",
                    "flag {name} cannot be turned on: that tool is not available here; only {allowed} can be "
                    "(send other flags as false, or leave them out)",
                    {"name": shown, "allowed": allowed},
                )
            raise PydanticCustomError("tool_flag", "flag {name} must be true or false", {"name": shown})
        return self


class ChatTools(BaseModel):
    """The tools, in either form: one tool (``tool_name``/``tool_type``) or switches (``tool_list``)."""

    model_config = ConfigDict(extra="ignore")

    tool_name: Literal["Tavily", "QdrantDB"] | None = Field(
        None, description="One-tool form: Tavily (internet search) or QdrantDB (search in your documents)."
    )
    tool_type: Literal["InternetSearch", "DBSearch"] | None = Field(
        None, description="One-tool form: InternetSearch (with Tavily) or DBSearch (with QdrantDB); either one alone "
        "implies the other.",
    )
    tool_list: ToolList | None = Field(None, description="Switches form: which tools to turn on (not with tool_name).")
    pdf_references: list[DocumentId] | None = Field(
        None, max_length=MAX_PDF_REFERENCES,
        description=f"DBSearch / search_doc: ids of your documents from `pdfVectorStore` (1..{MAX_PDF_REFERENCES}). "
        "Refused when the document search is off.",
    )
    number_of_context: int | None = Field(
        None, ge=1, le=MAX_CONTEXT_CHUNKS,
        description=f"DBSearch / search_doc: document chunks given to the model, 1..{MAX_CONTEXT_CHUNKS}; default 4. "
        "Not used by the internet search.",
    )
    embedding_model: str | None = Field(
        None, pattern=EMBEDDING_MODEL_PATTERN,
        description="Accepted for compatibility. Documents are always searched with the embedding model they were "
        "stored with (query and document vectors must come from one model).",
    )


class ChatRequest(BaseModel):
    """Body of ``POST chat`` and ``POST streamChat``: turns as text or as {text, image_data}; tools in either form."""

    model_config = ConfigDict(extra="ignore")

    llm: Provider = Field(description="The provider: OpenAI, ClaudeAI, MistralAI, GeminiAI, or Local (our own model).")
    llm_model: str | None = Field(
        None, pattern=LLM_MODEL_PATTERN,
        description="The provider's model (`GET apps` and a 422 list the allowed ones); default: the provider's default.",
    )
    temperature: float = Field(0.7, ge=0, le=1, description="Sampling temperature 0..1 (0: most deterministic); default 0.7.")
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS_CAP,
        description="Reply tokens at most; default and cap set by the deployment (422 above its cap).",
    )
    system_msg: str | None = Field(
        None, max_length=MAX_SYSTEM_CHARS,
        description="The system message. With system turns in history too, all are joined: "
        "system_msg first, then the system turns in order.",
    )
    history: list[ChatMessage] = Field(
        json_schema_extra={"minItems": 1, "maxItems": MAX_TURNS},
        description=f"The conversation, 1..{MAX_TURNS} entries: starts with a user turn, alternates user/assistant, "
        "ends with the user turn to answer; system turns may appear anywhere (they form the system message).",
    )
    image_analyze: Flag = Field(
        False, description="Send the turns' images to the model (a vision model). Images given without it are a 422."
    )
    enable_tool: Flag | None = Field(
        None, description="Allow the tools in `tools`. false with a tool turned on is a 422; left out, the tools "
        "in `tools` are used.",
    )
    tools: ChatTools | None = Field(None, description="Tools the model may use: {tool_name, tool_type, pdf_references} "
                                 "or {tool_list, number_of_context, pdf_references, embedding_model}.")
    celery: NoCelery = Field(
        False, description="Only false: chat is answered synchronously (`chat`) or streamed (`streamChat`)."
    )

    @field_validator("history", mode="before")
    @classmethod
    def _turn_count(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise PydanticCustomError("history_empty", "is empty; send at least one user turn")
            if len(value) > MAX_TURNS:
                raise PydanticCustomError(
                    "history_long", "{n} entries; allowed: 1..{max} entries", {"n": len(value), "max": MAX_TURNS}
                )
        return value


# ---------------------------------------------------------------------------------------------
# Parsing with full field paths
# ---------------------------------------------------------------------------------------------

_MAX_PROBLEMS = 10


def field_path(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a field path: ``("history", 3, "content", "object", "text")``
    → ``history[3].content.text`` (union tags dropped)."""
    path = ""
    previous: Any = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not (previous == "content" and part in _CONTENT_TAGS):
            path += f".{part}" if path else str(part)
        previous = part
    return path or "body"


def describe(exc: ValidationError) -> str:
    """Every problem of ``exc`` as ``path: message (got value)``, joined by ``; ``."""
    problems = []
    errors = exc.errors(include_url=False)
    for err in errors[:_MAX_PROBLEMS]:
        got = ""
        if err["type"] != "missing" and not isinstance(err.get("input"), (dict, list)):
            text = repr(err.get("input"))
            got = f" (got {text if len(text) <= 60 else text[:57] + '...'})"
        problems.append(f"{field_path(tuple(err['loc']))}: {err['msg']}{got}")
    if len(errors) > _MAX_PROBLEMS:
        problems.append(f"and {len(errors) - _MAX_PROBLEMS} more")
    return "; ".join(problems)


def _integral(value: Any) -> Any:
    """``value`` with integral floats as ints (``2.0`` is an integer in JSON Schema), recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def parse_request(model: type[BaseModel], body: Any) -> Any:
    """Validate ``body`` as ``model``; a :class:`ValidationFailed` names each bad field by its full
    path and says what is allowed. Like ``parse_strict``, it then refuses what only pydantic's lax
    mode takes and the published JSON types do not (numbers in strings, 0/1 as booleans) — at
    every depth. Flags keep accepting yes/no."""
    if not isinstance(body, dict):
        raise ValidationFailed("body: must be a JSON object")
    try:
        req = model.model_validate(body)
    except ValidationError as exc:
        raise ValidationFailed(describe(exc)) from None
    try:
        model.model_validate(_integral(body), strict=True)
    except ValidationError as exc:
        raise ValidationFailed(describe(exc)) from None
    return req


def parse_chat_request(body: Any) -> ChatRequest:
    """A chat body (either shape) as a :class:`ChatRequest`, or a 422 naming each bad field by path."""
    req: ChatRequest = parse_request(ChatRequest, body)
    return req
