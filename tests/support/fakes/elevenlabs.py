"""A local fake of ElevenLabs' Text To Speech endpoint, for tests and local runs.

    python -m tests.support.fakes.elevenlabs --port 8765 [--api-key KEY]

It speaks the documented wire format of ``POST /v1/text-to-speech/{voice_id}``: query
``output_format`` (``mp3_<rate>_<kbps>``; default ``mp3_44100_128``; ``enable_logging`` and
``optimize_streaming_latency`` accepted), header ``xi-api-key``, JSON body ``{text, model_id,
voice_settings: {stability, similarity_boost, style, use_speaker_boost, speed}, ...}``. The answer is
``audio/mpeg``: a valid MP3 of silent MPEG-1 Layer III frames (mono), as many as make
``len(text) / chars_per_second`` seconds (15 characters a second by default), so ``mutagen`` reads
that duration. Errors use ElevenLabs' shapes: ``{"detail": {"status", "message"}}`` (400, 401, 429,
5xx) and FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` (422).

Faults are scripted per request, in order (:meth:`FakeElevenLabs.rate_limit`, ``server_error``,
``unauthorized``, ``slow``, ``unprocessable``, ``bad_request``); each request is recorded
(:attr:`FakeElevenLabs.requests`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

DEFAULT_KEY = "test-elevenlabs-key"
CHARS_PER_SECOND = 15.0
SAMPLES_PER_FRAME = 1152  # MPEG-1 Layer III
MPEG1_RATES = {44100: 0b00, 48000: 0b01, 32000: 0b10}
MPEG1_L3_KBPS = {32: 1, 40: 2, 48: 3, 56: 4, 64: 5, 80: 6, 96: 7, 112: 8, 128: 9, 160: 10, 192: 11, 224: 12,
                 256: 13, 320: 14}
_PATH = re.compile(r"^/v1/text-to-speech/([^/]+)$")
_FORMAT = re.compile(r"^mp3_(\d+)_(\d+)$")
_SETTINGS = ("stability", "similarity_boost", "style", "speed")


def silent_mp3(seconds: float, sample_rate: int = 44100, kbps: int = 128) -> bytes:
    """A valid MPEG-1 Layer III stream (mono, constant bitrate) of ``seconds`` of silence:
    frames whose side info is all zero (no coded audio), padded as a CBR encoder pads them."""
    if sample_rate not in MPEG1_RATES or kbps not in MPEG1_L3_KBPS:
        raise ValueError(f"no MPEG-1 Layer III frames at {sample_rate} Hz / {kbps} kbps")
    frames = max(1, math.ceil(seconds * sample_rate / SAMPLES_PER_FRAME))
    per_frame, remainder_step = divmod(144 * kbps * 1000, sample_rate)
    out = bytearray()
    remainder = 0
    for _ in range(frames):
        remainder += remainder_step
        padding = 1 if remainder >= sample_rate else 0
        remainder -= sample_rate * padding
        # sync + MPEG-1 + Layer III + no CRC | bitrate, rate, padding | mono, original
        header = bytes([0xFF, 0xFB, (MPEG1_L3_KBPS[kbps] << 4) | (MPEG1_RATES[sample_rate] << 2) | (padding << 1), 0xC4])
        out += header + bytes(per_frame + padding - len(header))
    return bytes(out)


@dataclass
class RecordedRequest:
    """One request as the fake received it (header names lower-cased)."""

    method: str
    path: str
    voice_id: str | None
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    """What the fake does instead of answering one request."""

    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0  # slow: wait this long, then answer normally (status 0) or with the fault


class FakeElevenLabs:
    """The fake server: ``start``/``stop`` or a context manager; ``base_url`` is what the SDK takes."""

    def __init__(self, api_key: str = DEFAULT_KEY, *, port: int = 0, chars_per_second: float = CHARS_PER_SECOND):
        self.api_key = api_key
        self.port = port
        self.chars_per_second = chars_per_second
        self.requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeElevenLabs:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-elevenlabs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases slow answers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeElevenLabs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting ----------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        """Answer the next request (after earlier scripted faults) with ``fault``."""
        with self._lock:
            self._faults.append(fault)

    def rate_limit(self, retry_after: int | str = 3) -> None:
        self.add_fault(Fault(429, _detail("too_many_concurrent_requests", "Too many concurrent requests."),
                             {"Retry-After": str(retry_after)}))

    def server_error(self, status: int = 500) -> None:
        self.add_fault(Fault(status, _detail("internal_server_error", "Internal server error.")))

    def unauthorized(self) -> None:
        self.add_fault(Fault(401, _detail("invalid_api_key", "Invalid API key")))

    def bad_request(self, status: str = "voice_not_found", message: str = "A voice with that id was not found.",
                    code: int = 400) -> None:
        self.add_fault(Fault(code, _detail(status, message)))

    def unprocessable(self, msg: str = "Input should be a valid string", loc: tuple[str, ...] = ("body", "text")) -> None:
        self.add_fault(Fault(422, {"detail": [{"loc": list(loc), "msg": msg, "type": "value_error"}]}))

    def slow(self, seconds: float) -> None:
        """Wait ``seconds`` before answering the next request (normally)."""
        self.add_fault(Fault(0, delay_seconds=seconds))

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- the endpoint -------------------------------------------------------
    def answer(self, request: RecordedRequest) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for one request (the handler writes them)."""
        fault = self._next_fault()
        if fault is not None and fault.delay_seconds:
            self._stopping.wait(fault.delay_seconds)
        if fault is not None and fault.status:
            return _json(fault.status, fault.body, fault.headers)
        if request.voice_id is None or request.method != "POST":
            return _json(404 if request.voice_id is None else 405, {"detail": "Not Found"})
        key = request.headers.get("xi-api-key")
        if not key or key != self.api_key:
            return _json(401, _detail("invalid_api_key", "Invalid API key"))
        problems = _validate(request)
        if problems:
            return _json(422, {"detail": problems})
        rate, kbps = _output_format(request.query.get("output_format", "mp3_44100_128"))
        if rate not in MPEG1_RATES or kbps not in MPEG1_L3_KBPS:
            return _json(422, {"detail": [{"loc": ["query", "output_format"], "msg": "this fake makes MPEG-1 mp3 only "
                                           "(mp3_44100_*, mp3_48000_*, mp3_32000_*)", "type": "value_error"}]})
        seconds = len(request.body["text"]) / self.chars_per_second
        return 200, {"Content-Type": "audio/mpeg"}, silent_mp3(seconds, rate, kbps)


def _detail(status: str, message: str) -> dict[str, Any]:
    return {"detail": {"status": status, "message": message}}


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


def _output_format(value: str) -> tuple[int, int]:
    match = _FORMAT.match(value)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _validate(request: RecordedRequest) -> list[dict[str, Any]]:
    """FastAPI-style validation errors of the JSON body (empty: valid)."""
    body = request.body
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    problems = []
    if not isinstance(body.get("text"), str):
        problems.append({"loc": ["body", "text"], "msg": "Field required", "type": "missing"})
    if body.get("model_id") is not None and not isinstance(body["model_id"], str):
        problems.append({"loc": ["body", "model_id"], "msg": "Input should be a valid string", "type": "string_type"})
    settings = body.get("voice_settings")
    if settings is not None:
        if not isinstance(settings, dict):
            problems.append({"loc": ["body", "voice_settings"], "msg": "Input should be a valid dictionary",
                             "type": "dict_type"})
        else:
            for name in _SETTINGS:
                value = settings.get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                    problems.append({"loc": ["body", "voice_settings", name], "msg": "Input should be a valid number",
                                     "type": "float_type"})
            boost = settings.get("use_speaker_boost")
            if boost is not None and not isinstance(boost, bool):
                problems.append({"loc": ["body", "voice_settings", "use_speaker_boost"],
                                 "msg": "Input should be a valid boolean", "type": "bool_type"})
    return problems


class _Handler(BaseHTTPRequestHandler):
    owner: FakeElevenLabs
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        match = _PATH.match(parts.path)
        request = RecordedRequest(
            method=self.command,
            path=parts.path,
            voice_id=unquote(match.group(1)) if match else None,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        self.owner._record(request)
        status, headers, payload = self.owner.answer(request)
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    do_POST = _handle
    do_GET = _handle

    def log_message(self, format: str, *args: Any) -> None:  # quiet: debug log only
        logger.debug("fake elevenlabs: " + format, *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.fakes.elevenlabs",
                                     description="A local fake of ElevenLabs' text-to-speech endpoint.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=DEFAULT_KEY)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fake = FakeElevenLabs(args.api_key, port=args.port).start()
    logger.info("fake ElevenLabs listening on %s (STUDIO_ELEVENLABS_BASE_URL)", fake.base_url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
