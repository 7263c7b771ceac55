"""The vendor-neutral shape of a conversation, shared by the ingress (which builds it from
either request shape of the contract), the chat service and every provider adapter.

Free of HTTP and of any vendor's SDK types. Images are already fetched and checked by the
ingress (the image input rules) and travel as bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class ChatImage:
    """An image in a user turn: encoded bytes (PNG or JPEG) and their media type."""

    data: bytes
    media_type: Literal["image/png", "image/jpeg"]
    detail: Literal["auto", "low", "high"] = "auto"  # OpenAI's image detail; others ignore it


@dataclass(frozen=True)
class ChatTurn:
    """One turn of the conversation (the system message is not a turn)."""

    role: Literal["user", "assistant"]
    text: str
    images: tuple[ChatImage, ...] = ()


@dataclass(frozen=True)
class ProviderCall:
    """What a provider adapter (or the local LLM deployment) is asked to answer: the turns
    alternate user/assistant, start and end with a user turn."""

    model: str
    system: str | None
    turns: tuple[ChatTurn, ...]
    temperature: float
    max_tokens: int


@dataclass(frozen=True)
class TextDelta:
    """A piece of the reply, in order."""

    text: str


@dataclass(frozen=True)
class Usage:
    """Token counts of one call: the last event of every stream."""

    prompt_tokens: int
    completion_tokens: int


ChatEvent = TextDelta | Usage


@dataclass(frozen=True)
class Source:
    """A retrieved passage given to the model and returned to the client."""

    kind: Literal["document", "web"]
    text: str
    score: float | None = None
    document_id: str | None = None  # kind == "document"
    chunk: int | None = None
    page: int | None = None
    url: str | None = None  # kind == "web"
    title: str | None = None


@dataclass
class ChatJob:
    """A validated chat request (``POST chat`` / ``streamChat``), tools resolved."""

    request_id: str
    tenant: str
    provider: str  # "OpenAI", "ClaudeAI", "MistralAI", "GeminiAI", "Local"
    model: str
    temperature: float
    system: str | None
    turns: tuple[ChatTurn, ...]
    max_tokens: int
    internet_search: bool = False
    documents: tuple[str, ...] = ()  # DBSearch: pdf_references (document ids of the tenant)
    context_chunks: int = 4  # DBSearch: how many chunks to retrieve (number_of_context)
    sources: list[Source] = field(default_factory=list)  # filled by the chat service


@dataclass(frozen=True)
class Retrieved:
    """The first event of a chat stream whose tools retrieved passages: what the model was given."""

    sources: tuple[Source, ...]


@dataclass(frozen=True)
class ChatReply:
    """A whole (non-streamed) chat answer."""

    text: str
    usage: Usage
    sources: tuple[Source, ...] = ()
