"""Turning a chat request (either shape, :mod:`ingress.contract.schemas.chat`) into a
:class:`~deployments.chat.messages.ChatJob`, and echoing it without inline images.

Rules applied here (each a 422 naming the field, e.g. ``history[2]``):

* ``llm`` must be a provider this deployment configures; ``llm_model`` one of its models
  (left out: its default model).
* The system message is ``system_msg`` and every ``system`` turn, joined in that order by a
  blank line (nothing a client sent is dropped); a system turn carries text only.
* The other turns start with a user turn, alternate user/assistant, and end with the user turn
  to answer. A user turn needs text or an image; an assistant turn needs text and no image.
* Images: ``image_data`` entries, and, in a text turn of a user, http(s) URLs whose path ends in
  ``.png``, ``.jpg``, ``.jpeg`` or ``.webp`` — only with ``image_analyze: true``. ``image_data``
  without ``image_analyze`` is a 422 (never silently dropped); URLs in a text without it are just
  text. Images need a vision model of the provider. Each is fetched under the image input rules
  (SSRF-guarded fetch, data: URI or base64, byte and pixel caps), decoded one at a time under the
  replica's decode budget, shrunk while decoding to what the provider takes (its
  ``max_image_side``, at most the deployment's) and re-encoded: PNG, or JPEG when the PNG would
  exceed ``max_image_bytes``.

:func:`plan_chat_job` applies every rule without IO; :func:`load_chat_job` then loads the images,
so a route can check the provider's key and the tenant's limits in between.
* Tools: seed shape ``tool_name``/``tool_type`` (either implies the other; a mismatched pair is a
  422) or ``tool_list``, not both. DBSearch / ``search_doc`` needs ``pdf_references``;
  ``pdf_references`` with the document search off is a 422. ``enable_tool: false`` with a tool
  turned on is a 422; left out, the tools in ``tools`` run.
* Bounds of :class:`ChatLimits` (the deployment's, at most the schema's).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from PIL import Image

from deployments.chat.messages import ChatImage, ChatJob, ChatTurn
from ingress.contract.errors import ValidationFailed
from ingress.contract.schemas import chat as schema
from ingress.contract.schemas.chat import ChatRequest, TurnContent
from ingress.inputs.decoding import ImageLoader
from ingress.inputs.images import fit_size, fit_within
from ingress.jobs import redact_url

log = logging.getLogger(__name__)

_IMAGE_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_URL_TRAILER = ".,;:!?)]}"


@dataclass(frozen=True)
class ChatLimits:
    """This deployment's chat bounds; each at most the schema's absolute bound of the same name."""

    max_turns: int = schema.MAX_TURNS
    max_turn_chars: int = schema.MAX_TURN_CHARS
    max_system_chars: int = schema.MAX_SYSTEM_CHARS
    max_total_chars: int = schema.MAX_TOTAL_CHARS
    max_images_per_turn: int = schema.MAX_IMAGES_PER_TURN
    max_images: int = schema.MAX_IMAGES
    max_pdf_references: int = schema.MAX_PDF_REFERENCES
    max_context_chunks: int = schema.MAX_CONTEXT_CHUNKS
    context_chunks_default: int = 4
    max_tokens_default: int = 1024
    max_tokens_max: int = 4096
    #: Images are shrunk (aspect kept) to fit this side (and their provider's own, ``ProviderModels``),
    #: then encoded within ``max_image_bytes`` (vendors' own caps: Anthropic 5 MB, OpenAI 20 MB).
    max_image_side: int = 3072
    max_image_bytes: int = 3_500_000
    internet_search_enabled: bool = True
    documents_enabled: bool = True

    def __post_init__(self) -> None:
        caps = {
            "max_turns": schema.MAX_TURNS, "max_turn_chars": schema.MAX_TURN_CHARS,
            "max_system_chars": schema.MAX_SYSTEM_CHARS, "max_total_chars": schema.MAX_TOTAL_CHARS,
            "max_images_per_turn": schema.MAX_IMAGES_PER_TURN, "max_images": schema.MAX_IMAGES,
            "max_pdf_references": schema.MAX_PDF_REFERENCES, "max_context_chunks": schema.MAX_CONTEXT_CHUNKS,
            "max_tokens_max": schema.MAX_TOKENS_CAP,
        }
        for name, cap in caps.items():
            value = getattr(self, name)
            if not 0 <= value <= cap:
                raise ValueError(f"ChatLimits.{name} must be 0..{cap}, got {value}")
        if not 1 <= self.context_chunks_default <= self.max_context_chunks:
            raise ValueError("ChatLimits.context_chunks_default must be 1..max_context_chunks")
        if not 1 <= self.max_tokens_default <= self.max_tokens_max:
            raise ValueError("ChatLimits.max_tokens_default must be 1..max_tokens_max")
        if self.max_image_side < 64 or self.max_image_bytes < 64 * 1024:
            raise ValueError("ChatLimits: max_image_side must be ≥ 64 and max_image_bytes ≥ 64 KiB")

    @classmethod
    def from_config(cls, chat: Any, documents_enabled: bool = True, internet_search_enabled: bool = True,
                    **overrides: Any) -> ChatLimits:
        """From the registry's ``ChatConfig`` (``max_tokens_default``, ``max_tokens_max``)."""
        return cls(max_tokens_default=chat.max_tokens_default, max_tokens_max=chat.max_tokens_max,
                   documents_enabled=documents_enabled, internet_search_enabled=internet_search_enabled, **overrides)


#: The longest image side each provider reads; larger images are shrunk by the vendor anyway (OpenAI
#: fits 2048x2048, Anthropic 1568 px on the long edge, Pixtral 1024x1024, Gemini 3072x3072), so they
#: are shrunk here, before they cost memory, bandwidth and tokens.
PROVIDER_IMAGE_SIDE = {"OpenAI": 2048, "ClaudeAI": 1568, "MistralAI": 1024, "GeminiAI": 3072, "Local": 1024}


@dataclass(frozen=True)
class ProviderModels:
    """One provider's models: those ``llm_model`` may name, those that read images, the default,
    and the longest image side it reads."""

    models: tuple[str, ...]
    vision_models: tuple[str, ...] = ()
    default_model: str | None = None
    max_image_side: int = 2048

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("ProviderModels.models is empty")
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of models")
        if set(self.vision_models) - set(self.models):
            raise ValueError("vision_models must be among models")

    @property
    def default(self) -> str:
        return self.default_model or self.models[0]

    @classmethod
    def from_config(cls, provider: Any, name: str = "") -> ProviderModels:
        """From the registry's ``ProviderConfig`` of provider ``name``."""
        side = provider.max_image_side or PROVIDER_IMAGE_SIDE.get(name, 2048)
        return cls(tuple(provider.models), tuple(provider.vision_models), provider.default, side)


def provider_models(chat: Any) -> dict[str, ProviderModels]:
    """Every provider of the registry's ``ChatConfig``."""
    return {name: ProviderModels.from_config(p, name) for name, p in chat.providers.items()}


@dataclass(frozen=True)
class _ImageRef:
    field: str  # e.g. history[3].content.image_data[0].url
    value: str
    detail: Literal["auto", "low", "high"]


@dataclass
class _Turn:
    index: int  # in history
    role: Literal["user", "assistant"]
    text: str
    images: list[_ImageRef]


@dataclass(frozen=True)
class ChatPlan:
    """A chat request with every rule applied and nothing loaded yet (:func:`plan_chat_job`)."""

    request_id: str
    tenant: str
    provider: str
    model: str
    temperature: float
    system: str | None
    turns: tuple[_Turn, ...]
    max_tokens: int
    internet_search: bool
    documents: tuple[str, ...]
    context_chunks: int
    max_image_side: int

    @property
    def images(self) -> list[_ImageRef]:
        return [ref for turn in self.turns for ref in turn.images]

    def token_estimate(self) -> int:
        """What the call may cost at most, in tokens: the text (4 characters a token), ~1000 a picture,
        passages a tool may add (~300 each), and the reply's ``max_tokens``."""
        chars = len(self.system or "") + sum(len(t.text) for t in self.turns)
        passages = self.context_chunks if self.documents else 0
        passages += 5 if self.internet_search else 0
        return -(-chars // 4) + 1000 * len(self.images) + 300 * passages + self.max_tokens


async def build_chat_job(
    req: ChatRequest, tenant: str, request_id: str, providers: dict[str, ProviderModels], limits: ChatLimits,
    images: ImageLoader,
) -> ChatJob:
    """:func:`plan_chat_job`, then :func:`load_chat_job`."""
    return await load_chat_job(plan_chat_job(req, tenant, request_id, providers, limits), limits, images)


def plan_chat_job(req: ChatRequest, tenant: str, request_id: str, providers: dict[str, ProviderModels],
                  limits: ChatLimits) -> ChatPlan:
    """Normalise either request shape and check every rule (the module docstring), without IO.

    All problems found are reported in one :class:`ValidationFailed` (turn-order problems: the first one)."""
    problems: list[str] = []
    provider = providers.get(req.llm)
    if provider is None:
        configured = ", ".join(p for p in schema.PROVIDERS if p in providers) or "none"
        raise ValidationFailed(f"llm: {req.llm} is not available on this deployment; allowed: one of {configured}")
    model = req.llm_model or provider.default
    if model not in provider.models:
        problems.append(f"llm_model: {model!r} is not a {req.llm} model; allowed: one of {', '.join(provider.models)}")
    max_tokens = limits.max_tokens_default if req.max_tokens is None else req.max_tokens
    if max_tokens > limits.max_tokens_max:
        problems.append(f"max_tokens: {max_tokens} exceeds this deployment's cap; allowed: 1..{limits.max_tokens_max}")

    system = _system_message(req, limits, problems)
    turns = _turns(req, limits, problems)
    _check_order(turns, problems)
    _check_sizes(system, turns, limits, problems)
    images = [ref for turn in turns for ref in turn.images]
    if images and model in provider.models and model not in provider.vision_models:
        vision = ", ".join(provider.vision_models) or "none on this deployment"
        problems.append(f"llm_model: {model} cannot read images (image_analyze: true with images); {req.llm} "
                        f"models that can: {vision}")
    internet_search, documents, context_chunks = _tools(req, limits, problems)
    if problems:
        raise ValidationFailed("; ".join(problems))
    return ChatPlan(request_id=request_id, tenant=tenant, provider=req.llm, model=model, temperature=req.temperature,
                    system=system, turns=tuple(turns), max_tokens=max_tokens, internet_search=internet_search,
                    documents=documents, context_chunks=context_chunks,
                    max_image_side=min(limits.max_image_side, provider.max_image_side))


async def load_chat_job(plan: ChatPlan, limits: ChatLimits, images: ImageLoader) -> ChatJob:
    """The job of ``plan``, its images loaded (:func:`_load_images`). Image problems are
    :class:`~ingress.contract.errors.InputFetchError` naming the image's field."""
    loaded = await _load_images(plan.images, plan.max_image_side, limits, images)
    chat_turns = tuple(
        ChatTurn(role=t.role, text=t.text, images=tuple(loaded[ref.field] for ref in t.images)) for t in plan.turns
    )
    log.debug("chat job", extra={"studio_task_id": plan.request_id, "llm": plan.provider, "llm_model": plan.model,
                                 "turns": len(chat_turns), "images": len(loaded)})
    return ChatJob(
        request_id=plan.request_id, tenant=plan.tenant, provider=plan.provider, model=plan.model,
        temperature=plan.temperature, system=plan.system, turns=chat_turns, max_tokens=plan.max_tokens,
        internet_search=plan.internet_search, documents=plan.documents, context_chunks=plan.context_chunks,
    )


def _content(content: str | TurnContent) -> tuple[str, list[Any]]:
    if isinstance(content, str):
        return content, []
    return content.text or "", list(content.image_data or [])


def _system_message(req: ChatRequest, limits: ChatLimits, problems: list[str]) -> str | None:
    parts = [req.system_msg] if req.system_msg and req.system_msg.strip() else []
    for i, turn in enumerate(req.history):
        if turn.role != "system":
            continue
        text, image_data = _content(turn.content)
        if image_data:
            problems.append(f"history[{i}].content.image_data: a system turn carries text only; put images in a user turn")
        if text.strip():
            parts.append(text)
    if not parts:
        return None
    system = "\n\n".join(parts)
    if len(system) > limits.max_system_chars:
        problems.append(f"system_msg: the system message (system_msg and system turns) has {len(system)} characters; "
                        f"allowed: at most {limits.max_system_chars}")
    return system


def _turns(req: ChatRequest, limits: ChatLimits, problems: list[str]) -> list[_Turn]:
    """The user and assistant turns with their image references (fields named by history index)."""
    if len(req.history) > limits.max_turns:
        problems.append(f"history: {len(req.history)} entries; allowed: 1..{limits.max_turns}")
    turns: list[_Turn] = []
    for i, entry in enumerate(req.history):
        if entry.role == "system":
            continue
        text, image_data = _content(entry.content)
        refs: list[_ImageRef] = []
        if image_data:
            if entry.role == "assistant":
                problems.append(f"history[{i}].content.image_data: an assistant turn carries text only")
            elif not req.image_analyze:
                problems.append(f"history[{i}].content.image_data: images are read only with image_analyze: true; "
                                "set image_analyze: true, or leave image_data out")
            else:
                refs = [_ImageRef(f"history[{i}].content.image_data[{k}].url", d.url, d.details)
                        for k, d in enumerate(image_data)]
        elif isinstance(entry.content, str) and entry.role == "user" and req.image_analyze:
            refs = [_ImageRef(f"history[{i}].content (image URL {k + 1})", url, "auto")
                    for k, url in enumerate(image_urls(text))]
        if entry.role == "user" and not text.strip() and not refs and not image_data:
            problems.append(f"history[{i}].content: a user turn needs text or an image")
        if entry.role == "assistant" and not text.strip():
            problems.append(f"history[{i}].content: an assistant turn needs text")
        if len(text) > limits.max_turn_chars:
            problems.append(f"history[{i}].content: {len(text)} characters; allowed: at most {limits.max_turn_chars}")
        if len(refs) > limits.max_images_per_turn:
            problems.append(f"history[{i}].content: {len(refs)} images; allowed: at most {limits.max_images_per_turn} "
                            "per turn")
        turns.append(_Turn(i, entry.role, text, refs))
    return turns


def image_urls(text: str) -> list[str]:
    """http(s) URLs in ``text`` whose path ends in an image suffix (``.png``, ``.jpg``, ``.jpeg``,
    ``.webp``), in order, without repeats (the seed shape's images)."""
    found: list[str] = []
    for match in _IMAGE_URL.finditer(text):
        url = match.group(0).rstrip(_URL_TRAILER)
        try:
            path = urlsplit(url).path.lower()
        except ValueError:
            continue
        if path.endswith(_IMAGE_SUFFIXES) and url not in found:
            found.append(url)
    return found


def _check_order(turns: list[_Turn], problems: list[str]) -> None:
    """Start with a user turn, alternate, end with a user turn; the first violation is reported."""
    if not turns:
        problems.append("history: no user turn; send at least one (system turns alone are not a conversation)")
        return
    first = turns[0]
    if first.role != "user":
        problems.append(f"history[{first.index}]: the conversation must start with a user turn, got {first.role}")
        return
    for before, turn in zip(turns, turns[1:], strict=False):
        if turn.role == before.role:
            expected = "assistant" if before.role == "user" else "user"
            article = "an" if expected == "assistant" else "a"
            problems.append(f"history[{turn.index}]: expected {article} {expected} turn after the {before.role} turn "
                            f"history[{before.index}], got {turn.role}")
            return
    last = turns[-1]
    if last.role != "user":
        problems.append(f"history[{last.index}]: the conversation must end with a user turn (the message to answer), "
                        f"got {last.role}")


def _check_sizes(system: str | None, turns: list[_Turn], limits: ChatLimits, problems: list[str]) -> None:
    total = len(system or "") + sum(len(t.text) for t in turns)
    if total > limits.max_total_chars:
        problems.append(f"history: {total} characters in all (system message and turns); allowed: at most "
                        f"{limits.max_total_chars}")
    count = sum(len(t.images) for t in turns)
    if count > limits.max_images:
        problems.append(f"history: {count} images in all; allowed: at most {limits.max_images} per request")


def _tools(req: ChatRequest, limits: ChatLimits, problems: list[str]) -> tuple[bool, tuple[str, ...], int]:
    """(internet_search, documents, context_chunks) from either tools shape."""
    tools = req.tools
    if tools is None:
        return False, (), limits.context_chunks_default
    internet = docs = False
    seed = tools.tool_name is not None or tools.tool_type is not None
    both = seed and tools.tool_list is not None
    if both:
        problems.append("tools: send one shape: tool_name/tool_type (one tool) or tool_list, not both")
    elif tools.tool_list is not None:
        internet, docs = tools.tool_list.internet_search, tools.tool_list.search_doc
    elif seed:
        pairs = ", ".join(f"{name} with {kind}" for name, kind in schema.TOOL_TYPES.items())
        kind = tools.tool_type or schema.TOOL_TYPES[tools.tool_name or ""]
        if tools.tool_name is not None and schema.TOOL_TYPES[tools.tool_name] != kind:
            problems.append(f"tools.tool_type: {tools.tool_type} does not go with tool_name {tools.tool_name}; "
                            f"allowed: {pairs}")
        internet, docs = kind == "InternetSearch", kind == "DBSearch"
    references = tuple(dict.fromkeys(tools.pdf_references or ()))  # repeats dropped, order kept
    if docs and not references:
        problems.append("tools.pdf_references: the document search (DBSearch / search_doc) needs at least one "
                        "document id from pdfVectorStore")
    if references and not docs and not both:
        problems.append("tools.pdf_references: given, but the document search is off; set tool_type: DBSearch "
                        "(tool_name: QdrantDB) or tool_list.search_doc: true, or leave pdf_references out")
    if len(references) > limits.max_pdf_references:
        problems.append(f"tools.pdf_references: {len(references)} ids; allowed: at most {limits.max_pdf_references}")
    chunks = limits.context_chunks_default if tools.number_of_context is None else tools.number_of_context
    if chunks > limits.max_context_chunks:
        problems.append(f"tools.number_of_context: {chunks}; allowed: 1..{limits.max_context_chunks}")
    turned_on = [name for name, on in (("internet search", internet), ("document search", docs)) if on]
    if turned_on and req.enable_tool is False:
        problems.append(f"enable_tool: false, but tools turns on the {' and the '.join(turned_on)}; "
                        "set enable_tool: true, or leave tools out")
    if internet and not limits.internet_search_enabled:
        problems.append("tools: the internet search is not enabled on this deployment")
    if docs and not limits.documents_enabled:
        problems.append("tools: the document search is not enabled on this deployment")
    return internet, references if docs else (), chunks


async def _load_images(refs: list[_ImageRef], side: int, limits: ChatLimits,
                       images: ImageLoader) -> dict[str, ChatImage]:
    """Every image fetched concurrently (the first failure cancels the others and is raised), then
    decoded one at a time, shrunk to ``side`` while decoding, and re-encoded (:func:`encode_image`)."""
    if not refs:
        return {}
    tasks = [asyncio.create_task(images.fetch(ref.value, ref.field)) for ref in refs]
    try:
        fetched = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    loaded: dict[str, ChatImage] = {}
    for ref, image in zip(refs, fetched, strict=True):
        encode = functools.partial(encode_image, detail=ref.detail, limits=limits)
        loaded[ref.field] = await images.decode(image, fit_size(image.size, side, side), then=encode)
    return loaded


def encode_image(image: Image.Image, detail: Literal["auto", "low", "high"], limits: ChatLimits) -> ChatImage:
    """``image`` (RGB) shrunk to fit ``limits.max_image_side`` and encoded: PNG when it fits in
    ``limits.max_image_bytes``, else JPEG (quality 90, then 75), shrinking further if still too big."""
    image = fit_within(image, limits.max_image_side, limits.max_image_side)
    png = _encode(image, "PNG")
    if len(png) <= limits.max_image_bytes:
        return ChatImage(png, "image/png", detail)
    while True:
        for quality in (90, 75):
            jpeg = _encode(image, "JPEG", quality=quality)
            if len(jpeg) <= limits.max_image_bytes:
                return ChatImage(jpeg, "image/jpeg", detail)
        width, height = image.size
        image = image.resize((max(1, width * 3 // 4), max(1, height * 3 // 4)), Image.Resampling.LANCZOS)


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# The envelope's ``input``
# ---------------------------------------------------------------------------------------------


def redact_chat(req: ChatRequest) -> dict[str, Any]:
    """The request as echoed in the envelope's ``input``: inline images (data: URIs, base64)
    become ``<inline image, N characters>``; image URLs are kept without user info and with
    credential-like query values (``token``, ``sig``, ``key``, ...) as ``REDACTED``."""
    echo: dict[str, Any] = req.model_dump(mode="json", exclude_none=True)
    for turn in echo.get("history", []):
        content = turn.get("content")
        if isinstance(content, dict):
            for item in content.get("image_data") or []:
                item["url"] = redact_url(item["url"])
    return echo
