"""A local fake of the LLM vendors and of Tavily, speaking each one's documented wire format.

One ``ThreadingHTTPServer`` on 127.0.0.1 serves every vendor under its own prefix, so one process
fakes them all (``base_url(vendor)`` is what the vendor's SDK takes as its base URL):

==========  ==============================  ===========================================================
vendor      base URL the SDK is given       what is served under it
==========  ==============================  ===========================================================
openai      ``<root>/openai/v1``            ``POST /chat/completions`` (JSON, or SSE ``data:`` chunks,
                                            an optional usage chunk, ``data: [DONE]``)
anthropic   ``<root>/anthropic``            ``POST /v1/messages`` (JSON, or SSE events ``message_start``
                                            ... ``message_stop``)
mistral     ``<root>/mistral``              ``POST /v1/chat/completions`` (JSON, or SSE, usage on the last chunk)
gemini      ``<root>/gemini``               ``POST /v1/models/{model}:generateContent`` (or ``/v1beta/``) and
                                            ``:streamGenerateContent?alt=sse``
tavily      ``<root>/tavily``               ``POST /search``
==========  ==============================  ===========================================================

Replies are deterministic: the text is ``"echo: <last user text>"``, streamed one word per chunk;
usage is ``prompt = words in every text of the request (system included)``, ``completion = words of
the reply``. Every request is recorded (``requests()``) and checked: the vendor's auth header (a wrong
or missing key gets the vendor's own 401-style error; Gemini's is its documented 400 ``API_KEY_INVALID``)
and the required fields (a 400 in the vendor's error shape).

Faults are scripted per vendor with ``fail(vendor, kind, times=1, ...)``: ``rate_limited`` (429 with
``Retry-After``), ``unavailable`` (500/502/503/504/529), ``credentials`` (401/403), ``rejected``
(400/404/413/422, with a message holding a fake key and a URL, to test sanitising), ``slow`` (wait
``delay`` seconds before answering), ``midstream`` (``after`` chunks, then the vendor's documented
in-stream error event; Mistral has none, so the connection is cut), ``drop`` (``after`` chunks, then
the connection is cut) and ``wait_disconnect`` (a chunk every ``interval`` seconds for ``duration``
seconds; ``streams()`` records whether the client went away early).

Usable in process (``with FakeVendors() as fake: ...``) or as a process of its own for end-to-end
tests: ``python -m tests.support.fakes.llm_vendors --port N`` writes one JSON line to stdout (the
``STUDIO_*`` variables to set) once it serves; a test then drives it through ``RemoteFakeVendors(url)``
(the same ``fail`` / ``requests`` / ``streams`` / ``reset`` over ``/_fake/...`` control routes).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import socket
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

logger = logging.getLogger(__name__)

FAKE_VENDORS: tuple[str, ...] = ("openai", "anthropic", "mistral", "gemini", "tavily")
FAULT_KINDS: tuple[str, ...] = ("rate_limited", "unavailable", "credentials", "rejected", "slow", "midstream", "drop",
                                "wait_disconnect")
#: The default message of a ``rejected`` fault: it holds what an adapter must never pass on (a key, a URL).
LEAKY_MESSAGE = ("This model's maximum context length is 10 tokens; key sk-fake-0123456789abcdefghijKLMN "
                 "was used, see https://internal.vendor.example/v1/debug?key=sk-fake-0123456789abcdefghij for more")
_STREAM_FAULTS = ("midstream", "drop", "wait_disconnect")
_BASE_PATHS = {"openai": "/openai/v1", "anthropic": "/anthropic", "mistral": "/mistral", "gemini": "/gemini",
               "tavily": "/tavily"}


def reply_text(last_user_text: str) -> str:
    """The fake's reply to a conversation whose last user turn says ``last_user_text``."""
    return f"echo: {last_user_text}".strip()


def reply_chunks(text: str) -> list[str]:
    """How the fake splits a reply into stream chunks (one word with its trailing space each)."""
    return re.findall(r"\S+\s*", text) or [text]


def count_words(texts: list[str]) -> int:
    """The fake's token count: whitespace-separated words over ``texts``."""
    return len(" ".join(texts).split())


@dataclass(frozen=True)
class RecordedRequest:
    """One request a vendor route received (``path`` is after the vendor prefix; header names lower-cased)."""

    vendor: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    """A scripted failure for the next ``times`` calls to one vendor."""

    kind: str
    times: int = 1
    status: int | None = None
    retry_after: str | None = None
    retry_after_ms: int | None = None
    delay: float = 0.0
    after: int = 2
    interval: float = 0.05
    duration: float = 30.0
    message: str | None = None


@dataclass
class StreamRecord:
    """What became of one streamed answer."""

    vendor: str
    kind: str  # "normal" or the stream fault
    chunks_sent: int = 0
    completed: bool = False
    disconnected: bool = False
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None


class _Disconnected(Exception):
    pass


@dataclass
class _Stream:
    """A vendor's streamed answer: ``head`` frames, one frame per ``deltas`` chunk, ``tail`` frames;
    ``delta(text)`` makes one more chunk frame (wait_disconnect); ``error`` is the in-stream error event."""

    head: list[bytes]
    deltas: list[bytes]
    tail: list[bytes]
    delta: Any
    error: bytes | None
    content_type: str = "text/event-stream"


def _sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return ((f"event: {event}\n" if event else "") + f"data: {text}\n\n").encode()


class _State:
    def __init__(self, keys: dict[str, str]):
        self.keys = keys
        self.lock = threading.Lock()
        self.records: list[RecordedRequest] = []
        self.streams: list[StreamRecord] = []
        self.faults: dict[str, deque[Fault]] = {v: deque() for v in FAKE_VENDORS}
        self.stopping = threading.Event()

    def take_fault(self, vendor: str) -> Fault | None:
        with self.lock:
            queue = self.faults[vendor]
            if not queue:
                return None
            fault = queue[0]
            fault.times -= 1
            if fault.times <= 0:
                queue.popleft()
            return fault

    def reset(self) -> None:
        with self.lock:
            self.records.clear()
            self.streams.clear()
            for queue in self.faults.values():
                queue.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    state: _State


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        logger.debug("fake vendors: " + format, *args)

    @property
    def state(self) -> _State:
        return self.server.state

    # ---- plumbing -------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError as exc:
            raise _Disconnected from exc

    def _cut(self) -> None:
        """Close the connection in the middle of a chunked body (the client sees an incomplete read)."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query))
        raw = self._read_body()
        if split.path.startswith("/_fake/"):
            self._control(split.path, query, raw)
            return
        vendor, _, rest = split.path.lstrip("/").partition("/")
        if vendor not in FAKE_VENDORS:
            self._send_json(404, {"error": "no such vendor"})
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        path = "/" + rest
        with self.state.lock:
            self.state.records.append(RecordedRequest(vendor, self.command, path, query,
                                                      {k.lower(): v for k, v in self.headers.items()}, body))
        if not self._authorised(vendor, query, body):
            self._credentials_error(vendor, None)
            return
        fault = self.state.take_fault(vendor)
        if fault is not None and fault.kind == "slow":
            if self.state.stopping.wait(fault.delay):
                return
            fault = None
        if fault is not None and fault.kind not in _STREAM_FAULTS:
            self._fault_response(vendor, fault)
            return
        getattr(self, f"_{vendor}")(path, query, body, fault)

    def _control(self, path: str, query: dict[str, str], raw: bytes) -> None:
        state = self.state
        vendor = query.get("vendor")
        if path == "/_fake/health":
            self._send_json(200, {"ok": True})
        elif path == "/_fake/requests":
            with state.lock:
                self._send_json(200, [asdict(r) for r in state.records if vendor in (None, r.vendor)])
        elif path == "/_fake/streams":
            with state.lock:
                self._send_json(200, [asdict(s) for s in state.streams if vendor in (None, s.vendor)])
        elif path == "/_fake/faults" and self.command == "POST":
            spec = json.loads(raw)
            add_fault(state, spec.pop("vendor"), **spec)
            self._send_json(200, {"ok": True})
        elif path == "/_fake/reset" and self.command == "POST":
            state.reset()
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": "no such control route"})

    # ---- auth and errors ------------------------------------------------------------------------

    def _authorised(self, vendor: str, query: dict[str, str], body: Any) -> bool:
        key = self.state.keys[vendor]
        bearer = self.headers.get("Authorization") == f"Bearer {key}"
        if vendor in ("openai", "mistral"):
            return bearer
        if vendor == "anthropic":  # the documented x-api-key; the SDK (2.x) sends its api_key as a Bearer token
            return self.headers.get("x-api-key") == key or bearer
        if vendor == "gemini":
            return self.headers.get("x-goog-api-key") == key or query.get("key") == key
        return bearer or (isinstance(body, dict) and body.get("api_key") == key)  # tavily

    def _credentials_error(self, vendor: str, status: int | None) -> None:
        if vendor == "gemini" and status is None:  # Gemini answers a bad key with a 400 carrying API_KEY_INVALID
            self._send_json(400, {"error": {
                "code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                             "domain": "googleapis.com"}]}})
            return
        status = status or 401
        message = "Incorrect API key provided." if status == 401 else "Permission denied."
        self._send_json(status, _error_body(vendor, status, message))

    def _fault_response(self, vendor: str, fault: Fault) -> None:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        if fault.kind == "rate_limited":
            if fault.retry_after is None and fault.retry_after_ms is None:
                headers["Retry-After"] = "7"
            self._send_json(429, _error_body(vendor, 429, fault.message or "Rate limit reached for requests"), headers)
        elif fault.kind == "unavailable":
            status = fault.status or 503
            self._send_json(status, _error_body(vendor, status, fault.message or "The server is overloaded"), headers)
        elif fault.kind == "credentials":
            self._credentials_error(vendor, fault.status or 401)
        elif fault.kind == "rejected":
            status = fault.status or 400
            self._send_json(status, _error_body(vendor, status, fault.message or LEAKY_MESSAGE), headers)

    def _bad_request(self, vendor: str, message: str) -> None:
        self._send_json(400, _error_body(vendor, 400, message))

    # ---- streaming ------------------------------------------------------------------------------

    def _stream(self, vendor: str, stream: _Stream, fault: Fault | None) -> None:
        kind = fault.kind if fault is not None else "normal"
        record = StreamRecord(vendor, kind)
        with self.state.lock:
            self.state.streams.append(record)
        self._start_stream(stream.content_type)
        try:
            for frame in stream.head:
                self._write_chunk(frame)
            if fault is not None and kind == "wait_disconnect":
                deadline = time.monotonic() + fault.duration
                while time.monotonic() < deadline:
                    self._write_chunk(stream.delta("tick "))
                    record.chunks_sent += 1
                    if self.state.stopping.wait(fault.interval):
                        return
            elif fault is not None:  # midstream / drop
                for frame in stream.deltas[:fault.after]:
                    self._write_chunk(frame)
                    record.chunks_sent += 1
                if kind == "midstream" and stream.error is not None:
                    self._write_chunk(stream.error)
                    self._write_chunk(b"")
                else:
                    self._cut()
                return
            else:
                for frame in stream.deltas:
                    self._write_chunk(frame)
                    record.chunks_sent += 1
            for frame in stream.tail:
                self._write_chunk(frame)
            self._write_chunk(b"")
            record.completed = True
        except _Disconnected:
            record.disconnected = True
            self.close_connection = True
        finally:
            record.ended = time.monotonic()

    # ---- OpenAI and Mistral: chat completions ---------------------------------------------------

    def _openai(self, path: str, query: dict[str, str], body: Any, fault: Fault | None) -> None:
        if path != "/v1/chat/completions" or self.command != "POST":
            self._send_json(404, _error_body("openai", 404, f"Unknown request URL: {self.command} {path}"))
            return
        self._chat_completions("openai", body, fault)

    def _mistral(self, path: str, query: dict[str, str], body: Any, fault: Fault | None) -> None:
        if path != "/v1/chat/completions" or self.command != "POST":
            self._send_json(404, _error_body("mistral", 404, "Not Found"))
            return
        self._chat_completions("mistral", body, fault)

    def _chat_completions(self, vendor: str, body: Any, fault: Fault | None) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            self._bad_request(vendor, "you must provide a model parameter")
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            self._bad_request(vendor, "messages must be a non-empty list of {role, content}")
            return
        if vendor == "openai" and re.match(r"(?:o\d|gpt-(?:[5-9]|\d{2,}))", body["model"]) \
                and body.get("temperature", 1) != 1:  # reasoning models take only their default temperature
            self._send_json(400, {"error": {"message": f"Unsupported value: 'temperature' does not support "
                                                       f"{body['temperature']} with this model. Only the default (1) "
                                                       "value is supported.", "type": "invalid_request_error",
                                            "param": "temperature", "code": "unsupported_value"}})
            return
        texts, last_user = [], ""
        for message in messages:
            parts = _content_texts(message.get("content"))
            texts += parts
            if message["role"] == "user":
                last_user = " ".join(parts)
        reply = reply_text(last_user)
        usage = {"prompt_tokens": count_words(texts), "completion_tokens": len(reply_chunks(reply)),
                 "total_tokens": count_words(texts) + len(reply_chunks(reply))}
        ident, created, model = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time()), body["model"]
        if not body.get("stream"):
            self._send_json(200, {"id": ident, "object": "chat.completion", "created": created, "model": model,
                                  "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                               "message": {"role": "assistant", "content": reply, "refusal": None}}],
                                  "usage": usage})
            return
        with_usage = vendor == "mistral" or bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None, last: bool = False) -> bytes:
            data: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if vendor == "openai":
                data["choices"][0]["logprobs"] = None
                if with_usage:
                    data["usage"] = None
            elif last:
                data["usage"] = usage
            return _sse(data)

        tail = [chunk({}, "stop", last=True)]
        if vendor == "openai" and with_usage:
            tail.append(_sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                              "choices": [], "usage": usage}))
        tail.append(b"data: [DONE]\n\n")
        error = _sse({"error": {"message": "The server had an error while processing your request.",
                                "type": "server_error", "param": None, "code": None}}) if vendor == "openai" else None
        self._stream(vendor, _Stream(head=[chunk({"role": "assistant", "content": ""})],
                                     deltas=[chunk({"content": piece}) for piece in reply_chunks(reply)],
                                     tail=tail, delta=lambda text: chunk({"content": text}), error=error), fault)

    # ---- Anthropic: messages --------------------------------------------------------------------

    def _anthropic(self, path: str, query: dict[str, str], body: Any, fault: Fault | None) -> None:
        if path != "/v1/messages" or self.command != "POST":
            self._send_json(404, _error_body("anthropic", 404, f"Not found: {path}"))
            return
        if not self.headers.get("anthropic-version"):
            self._bad_request("anthropic", "anthropic-version: header is required")
            return
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            self._bad_request("anthropic", "model: Field required")
            return
        if not isinstance(body.get("max_tokens"), int):
            self._bad_request("anthropic", "max_tokens: Field required")
            return
        if self.headers.get("anthropic-version", "") >= "2026-10-21":  # sampling parameters are gone from this version
            for name in ("temperature", "top_p", "top_k"):
                if name in body:
                    self._bad_request("anthropic", f"{name}: Extra inputs are not permitted")
                    return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or any(m.get("role") not in ("user", "assistant") for m in messages):
            self._bad_request("anthropic", "messages: roles must be user or assistant")
            return
        texts = _content_texts(body.get("system"))
        last_user = ""
        for message in messages:
            parts = _content_texts(message.get("content"))
            texts += parts
            if message["role"] == "user":
                last_user = " ".join(parts)
        reply = reply_text(last_user)
        prompt, completion = count_words(texts), len(reply_chunks(reply))
        ident, model = f"msg_{uuid.uuid4().hex[:24]}", body["model"]
        if not body.get("stream"):
            self._send_json(200, {"id": ident, "type": "message", "role": "assistant", "model": model,
                                  "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
                                  "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": completion}})
            return

        def delta(text: str) -> bytes:
            return _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
                        "content_block_delta")

        head = [
            _sse({"type": "message_start", "message": {
                "id": ident, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None,
                "stop_sequence": None, "usage": {"input_tokens": prompt, "output_tokens": 1}}}, "message_start"),
            _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                 "content_block_start"),
            _sse({"type": "ping"}, "ping"),
        ]
        tail = [
            _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            _sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                  "usage": {"output_tokens": completion}}, "message_delta"),
            _sse({"type": "message_stop"}, "message_stop"),
        ]
        error = _sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")
        self._stream("anthropic", _Stream(head, [delta(piece) for piece in reply_chunks(reply)], tail, delta, error), fault)

    # ---- Gemini: generateContent ----------------------------------------------------------------

    def _gemini(self, path: str, query: dict[str, str], body: Any, fault: Fault | None) -> None:
        match = re.fullmatch(r"/(?:v1|v1beta)/models/([^/:]+):(generateContent|streamGenerateContent)", path)
        if match is None or self.command != "POST":
            self._send_json(404, _error_body("gemini", 404, f"{path} is not found"))
            return
        model, method = match.groups()
        contents = body.get("contents") if isinstance(body, dict) else None
        if not isinstance(contents, list) or not contents:
            self._bad_request("gemini", "* GenerateContentRequest.contents: contents is not specified")
            return
        if any(c.get("role") not in ("user", "model") for c in contents):
            self._bad_request("gemini", "Please use a valid role: user, model.")
            return
        system = body.get("systemInstruction") or body.get("system_instruction") or {}
        texts = [p["text"] for p in system.get("parts", []) if "text" in p]
        last_user = ""
        for content in contents:
            parts = [p["text"] for p in content.get("parts", []) if "text" in p]
            texts += parts
            if content["role"] == "user":
                last_user = " ".join(parts)
        reply = reply_text(last_user)
        prompt, completion = count_words(texts), len(reply_chunks(reply))
        response_id = uuid.uuid4().hex[:16]

        def response(text: str, finish: str | None = None, final: bool = False) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if finish:
                candidate["finishReason"] = finish
            usage: dict[str, Any] = {"promptTokenCount": prompt, "totalTokenCount": prompt}
            if final:
                usage = {"promptTokenCount": prompt, "candidatesTokenCount": completion,
                         "totalTokenCount": prompt + completion}
            return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": response_id}

        if method == "generateContent":
            self._send_json(200, response(reply, "STOP", final=True))
            return
        pieces = reply_chunks(reply)
        if query.get("alt") != "sse":  # without alt=sse the API streams one JSON array
            items = [response(p) for p in pieces[:-1]] + [response(pieces[-1], "STOP", final=True)]
            self._send_json(200, items)
            return
        frames = [_sse(response(p)) for p in pieces[:-1]]
        tail = [_sse(response(pieces[-1], "STOP", final=True))]
        error = _sse({"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                                "status": "UNAVAILABLE"}})
        self._stream("gemini", _Stream([], frames, tail, lambda text: _sse(response(text)), error), fault)

    # ---- Tavily: search -------------------------------------------------------------------------

    def _tavily(self, path: str, query: dict[str, str], body: Any, fault: Fault | None) -> None:
        if path != "/search" or self.command != "POST":
            self._send_json(404, {"detail": {"error": "Not Found"}})
            return
        if not isinstance(body, dict) or not isinstance(body.get("query"), str) or not body["query"].strip():
            self._send_json(400, {"detail": {"error": "Query is missing."}})
            return
        max_results = body.get("max_results", 5)
        if not isinstance(max_results, int) or not 0 <= max_results <= 20:
            self._send_json(400, {"detail": {"error": "max_results must be between 0 and 20."}})
            return
        text = body["query"]
        slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "q"
        results = [{"title": f"Result {i + 1} for {text}", "url": f"https://example.com/{slug}/{i + 1}",
                    "content": f"Passage {i + 1} about {text}.", "score": round(0.9 - 0.1 * i, 3), "raw_content": None}
                   for i in range(max_results)]
        self._send_json(200, {"query": text, "follow_up_questions": None, "answer": None, "images": [],
                              "results": results, "response_time": 0.01, "request_id": uuid.uuid4().hex})


def _content_texts(content: Any) -> list[str]:
    """The text parts of a message's content (a string, or a list of typed parts/blocks)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text"]
    return []


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                    504: "timeout_error", 529: "overloaded_error"}
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                  503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _error_body(vendor: str, status: int, message: str) -> Any:
    """The vendor's documented error body for ``status``."""
    if vendor == "anthropic":
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
                "request_id": f"req_{uuid.uuid4().hex[:12]}"}
    if vendor == "gemini":
        error: dict[str, Any] = {"code": status, "message": message, "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
        if status == 429:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
        return {"error": error}
    if vendor == "tavily":
        return {"detail": {"error": message}}
    kind = ("invalid_request_error" if status < 429 else "requests" if status == 429 else "server_error")
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    if vendor == "mistral":
        return {"object": "error", "message": message, "type": kind, "param": None, "code": code}
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def add_fault(state: _State, vendor: str, kind: str, **options: Any) -> Fault:
    if vendor not in FAKE_VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
    fault = Fault(kind, **options)
    with state.lock:
        state.faults[vendor].append(fault)
    return fault


class _Urls:
    """Base URLs and ``STUDIO_*`` variables, shared by the in-process server and its remote driver."""

    url: str
    keys: dict[str, str]

    def base_url(self, vendor: str) -> str:
        """What ``vendor``'s SDK takes as its base URL (``STUDIO_<VENDOR>_BASE_URL``)."""
        return self.url + _BASE_PATHS[vendor]

    def api_key(self, vendor: str) -> str:
        return self.keys[vendor]

    def env(self) -> dict[str, str]:
        """``STUDIO_<VENDOR>_BASE_URL`` and ``STUDIO_<VENDOR>_API_KEY`` for every faked vendor."""
        out: dict[str, str] = {}
        for vendor in FAKE_VENDORS:
            out[f"STUDIO_{vendor.upper()}_BASE_URL"] = self.base_url(vendor)
            out[f"STUDIO_{vendor.upper()}_API_KEY"] = self.keys[vendor]
        return out

    def vendor_settings(self, **override: Any) -> Any:
        """The chat service's ``VendorSettings`` pointing at this fake (5 s per call), with ``override``."""
        from deployments.vendors import VendorSettings

        values = {k.removeprefix("STUDIO_").lower(): v for k, v in self.env().items()}
        return VendorSettings(**{**values, "vendor_timeout_seconds": 5, **override})


def default_keys() -> dict[str, str]:
    return {vendor: f"fake-{vendor}-key" for vendor in FAKE_VENDORS}


class FakeVendors(_Urls):
    """The fake, in this process (a daemon thread). ``with FakeVendors() as fake: fake.base_url("openai")``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keys: dict[str, str] | None = None,
                 public_host: str | None = None):
        """``public_host``: the host name in ``url`` / ``env()`` when clients reach the fake by another
        address than the one it binds (e.g. bound to 0.0.0.0 for the workers of a local cluster)."""
        self.keys = {**default_keys(), **(keys or {})}
        self._state = _State(self.keys)
        self._host, self._port, self._public_host = host, port, public_host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:  # type: ignore[override]
        if self._server is None:
            raise RuntimeError("the fake is not started")
        host, port = self._server.server_address[:2]
        return f"http://{self._public_host or host!s}:{port}"

    def start(self) -> FakeVendors:
        server = _Server((self._host, self._port), _Handler)
        server.state = self._state
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-vendors", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._state.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def __enter__(self) -> FakeVendors:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, vendor: str, kind: str, times: int = 1, **options: Any) -> None:
        """Script ``kind`` (one of ``FAULT_KINDS``) for the next ``times`` calls to ``vendor``; options are
        ``Fault``'s fields (``status``, ``retry_after``, ``retry_after_ms``, ``delay``, ``after``, ``interval``,
        ``duration``, ``message``)."""
        add_fault(self._state, vendor, kind, times=times, **options)

    def requests(self, vendor: str | None = None) -> list[RecordedRequest]:
        with self._state.lock:
            return [r for r in self._state.records if vendor in (None, r.vendor)]

    def streams(self, vendor: str | None = None) -> list[StreamRecord]:
        with self._state.lock:
            return [s for s in self._state.streams if vendor in (None, s.vendor)]

    def reset(self) -> None:
        """Forget recorded requests, streams and pending faults."""
        self._state.reset()


class RemoteFakeVendors(_Urls):
    """Drives a fake running as its own process (``python -m tests.support.fakes.llm_vendors``)."""

    def __init__(self, url: str, keys: dict[str, str] | None = None, timeout: float = 10):
        self.url = url.rstrip("/")
        self.keys = {**default_keys(), **(keys or {})}
        self._timeout = timeout

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self._timeout) as response:
            return json.loads(response.read())

    def healthy(self) -> bool:
        try:
            return bool(self._call("/_fake/health").get("ok"))
        except OSError:
            return False

    def fail(self, vendor: str, kind: str, times: int = 1, **options: Any) -> None:
        self._call("/_fake/faults", {"vendor": vendor, "kind": kind, "times": times, **options})

    def requests(self, vendor: str | None = None) -> list[RecordedRequest]:
        rows = self._call("/_fake/requests" + (f"?vendor={vendor}" if vendor else ""))
        return [RecordedRequest(**row) for row in rows]

    def streams(self, vendor: str | None = None) -> list[StreamRecord]:
        rows = self._call("/_fake/streams" + (f"?vendor={vendor}" if vendor else ""))
        return [StreamRecord(**row) for row in rows]

    def reset(self) -> None:
        self._call("/_fake/reset", {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local fake of the LLM vendors and Tavily (tests only).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (the JSON line on stdout names it)")
    parser.add_argument("--public-host", default=None, help="host name clients use, when not --host (e.g. the node IP)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    fake = FakeVendors(args.host, args.port, public_host=args.public_host).start()
    sys.stdout.write(json.dumps({"url": fake.url, "env": fake.env()}) + "\n")
    sys.stdout.flush()
    logger.info("fake vendors serving on %s", fake.url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
