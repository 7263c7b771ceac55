"""Text To Speech: a local piper voice and ElevenLabs, as two family deployments of audio files.

Both take a ``SpeechJob`` (``prompt`` 10..2500 characters, ElevenLabs-style ``audio_parameters``) and
store one audio file under ``tenants/<tenant>/audio/<request_id>/0.<ext>``; the result meta is
``{"duration_seconds", "format", "sample_rate", "voice"}``.

``LocalSpeechFamily`` (kind ``tts``) runs a piper voice (``piper-tts``, ONNX Runtime, espeak-ng
phonemes from the package's bundled data: no network). ``model_source`` is a directory with one
``<voice>.onnx`` + ``<voice>.onnx.json`` (e.g. ``en_US-lessac-medium``) or ``model.onnx`` +
``model.onnx.json``, loaded by ``piper.PiperVoice.load``. The text is spoken sentence by sentence
(progress per sentence; a cancelled task stops between sentences) into a 16-bit mono WAV, with
``SENTENCE_SILENCE`` seconds between sentences. How ``audio_parameters`` map onto piper:

* ``voice_id``: null → the voice (its default speaker); the voice's name (file stem); for a
  multi-speaker voice a speaker name of its ``speaker_id_map`` or a speaker number; or a name the
  deployment's ``voice_aliases`` maps to one of those (e.g. the seed's ElevenLabs id
  ``21m00Tcm4TlvDq8ikWAM`` → this voice). Anything else: 422 naming ``voice_id``.
* ``stability`` (0..1): piper's variability. Both noise scales are the voice's defaults times
  ``2 * (1 - stability)``: 0.5 (ElevenLabs' default) keeps the voice's own settings, 1 is fully
  steady (no noise), 0 doubles the variation.
* ``similarity_boost``, ``style``, ``use_speaker_boost``: piper has no such controls. Accepted only as
  null or ElevenLabs' defaults, which ask for nothing beyond the voice as it is (``similarity_boost``
  0.75, ``style`` 0, ``use_speaker_boost`` true); any other value is a 422 naming the field.

``ElevenLabsSpeechFamily`` (kind ``tts_vendor``) calls ElevenLabs' ``POST /v1/text-to-speech/{voice_id}``
through the official SDK (``AsyncElevenLabs``, SDK retries off) with ``model_source`` as ``model_id``,
``output_format`` ``mp3_44100_128`` and the job's settings as ``voice_settings`` (only the fields the job
sets; none set: the voice's stored settings). Key and base URL come from the environment
(``STUDIO_ELEVENLABS_API_KEY``, ``STUDIO_ELEVENLABS_BASE_URL``; ``deployments.vendors``); the call is
bounded by ``STUDIO_VENDOR_TIMEOUT_SECONDS`` and ``max_bytes``. It runs in the async ``prepare`` hook
(IO, not model work). Failures become ``VendorError``: 429 → ``rate_limited`` (with the vendor's
``Retry-After``), 5xx and connection failures → ``unavailable``, 401/403 → ``credentials`` (401
``quota_exceeded`` → ``unavailable``), 400/404/422 → ``rejected`` with a short sanitised detail, a slow
vendor → ``timeout``.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import logging
import re
import time
import unicodedata
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deployments.catalog import LOCAL_TTS_NEUTRAL
from deployments.errors import InvalidJobError, VendorError
from deployments.families.base import STALL_SECONDS, FamilyBase, OnStep, Packaged
from deployments.types import SpeechJob

if TYPE_CHECKING:
    from deployments.vendors import VendorSettings
    from storage.base import ObjectStore
    from storage.settings import StorageSettings

logger = logging.getLogger("deployments.families.speech")

TASK = "tts"
PROMPT_MIN, PROMPT_MAX = 10, 2500
MAX_SIDE = 1536  # accepted from the builder (it passes it to every kind); speech has no images
MAX_AUDIO_SECONDS = 600.0  # local voice: refuse text that would speak longer than this
SENTENCE_SILENCE = 0.2  # seconds between sentences (piper's CLI default is 0)
#: ElevenLabs' defaults for the settings piper cannot vary: these values ask for nothing special.
NEUTRAL_SETTINGS = LOCAL_TTS_NEUTRAL
DEFAULT_STABILITY = 0.5
VENDOR = "ElevenLabs"
DEFAULT_VOICE_ID = "21m00Tcm4TlvDq8ikWAM"  # "Rachel", the seed's example
OUTPUT_FORMAT = "mp3_44100_128"
MAX_AUDIO_BYTES = 32 * 1024 * 1024  # 2500 characters at 128 kbit/s is ~3 MB
MAX_RETRY_AFTER = 3600.0
_VOICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # ElevenLabs ids are 20 alphanumerics; it is a URL path segment


# -- checks shared by both engines --------------------------------------------------
def check_prompt(prompt: Any) -> str:
    """The text to speak: a string of PROMPT_MIN..PROMPT_MAX characters with something to say."""
    if not isinstance(prompt, str) or not PROMPT_MIN <= len(prompt) <= PROMPT_MAX:
        got = f"{len(prompt)} characters" if isinstance(prompt, str) else type(prompt).__name__
        raise InvalidJobError("prompt", f"allowed: {PROMPT_MIN}..{PROMPT_MAX} characters of text (got {got})")
    # Control characters and lone surrogates carry no speech and break espeak-ng's C API: they become spaces.
    prompt = "".join(" " if (unicodedata.category(c) == "Cc" and c not in "\n\t") or unicodedata.category(c) == "Cs"
                     else c for c in prompt)
    if not prompt.strip():
        raise InvalidJobError("prompt", "the text is blank")
    return prompt


def check_unit(name: str, value: Any) -> float | None:
    """An ``audio_parameters`` number in 0..1 (or None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise InvalidJobError(name, f"allowed: a number in 0..1 (got {value!r})")
    return float(value)


def check_flag(name: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidJobError(name, f"allowed: true or false (got {value!r})")
    return value


#: The catalog's Text To Speech tasks (``deployments.catalog.TASKS``): one per kind, same job.
SPEECH_TASKS = (TASK, "tts_elevenlabs")


def check_task(job: SpeechJob) -> None:
    if job.task not in SPEECH_TASKS:
        raise InvalidJobError("task", f"this replica runs Text To Speech, not {job.task!r}")


# -- the local engine ------------------------------------------------------------------
@dataclass
class VoiceFiles:
    """A piper voice on disk."""

    name: str
    model: Path
    config: Path


def find_voice(model_source: str) -> VoiceFiles:
    """The voice in ``model_source``: a ``.onnx`` file, or a directory with exactly one ``<name>.onnx``
    + ``<name>.onnx.json`` (``model.onnx``: named after the directory)."""
    source = Path(model_source)
    if source.is_file() and source.suffix == ".onnx":
        candidates = [source]
    else:
        candidates = sorted(p for p in source.glob("*.onnx") if p.with_name(p.name + ".json").is_file())
        if not candidates:
            raise FileNotFoundError(f"no piper voice (<voice>.onnx + <voice>.onnx.json) in {model_source}")
        if len(candidates) > 1:
            preferred = [p for p in candidates if p.name == "model.onnx"]
            if not preferred:
                raise ValueError(f"several piper voices in {model_source}: {', '.join(p.name for p in candidates)}")
            candidates = preferred
    model = candidates[0]
    name = model.stem if model.stem != "model" else model.resolve().parent.name
    return VoiceFiles(name, model, model.with_name(model.name + ".json"))


@dataclass
class VoicePlan:
    """How one job is spoken: the speaker (multi-speaker voices), the voice named in the meta,
    and piper's noise scales."""

    speaker_id: int | None
    voice: str
    noise_scale: float
    noise_w_scale: float


@dataclass
class Speech:
    """A finished recording: 16-bit mono PCM."""

    pcm: bytes
    sample_rate: int
    voice: str

    @property
    def duration_seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    """16-bit mono PCM as a WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buf.getvalue()


class LocalSpeechFamily(FamilyBase[SpeechJob]):
    """Serve deployment of one piper voice (see the module docstring for the settings it honours).

    ``revision``, ``dtype`` and ``max_side`` are accepted because the builder passes them to every
    kind, and ignored. ``device``: ``auto`` (CUDA when onnxruntime has it and the replica a GPU),
    ``cuda`` or ``cpu``. ``voice_aliases``: other ids (e.g. ElevenLabs voice ids clients send) that
    mean this voice or one of its speakers.
    """

    kind = "tts"
    output_folder = "audio"

    def __init__(
        self,
        model_source: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        storage: StorageSettings | None = None,
        family: str = "",
        gpu: str = "",
        store: ObjectStore | None = None,
        max_side: int = MAX_SIDE,
        stall_seconds: float = STALL_SECONDS,
        device: str = "auto",
        voice_aliases: dict[str, str] | None = None,
        max_audio_seconds: float = MAX_AUDIO_SECONDS,
    ):
        from piper import PiperVoice

        from deployments.pipelines.onnx_runtime import providers

        super().__init__(family=family, gpu=gpu, storage=storage, store=store, stall_seconds=stall_seconds)
        self.model_source = model_source
        self.max_audio_seconds = max_audio_seconds
        start = time.perf_counter()
        files = find_voice(model_source)
        use_cuda = providers(device)[0] == "CUDAExecutionProvider"
        self.voice = PiperVoice.load(files.model, files.config, use_cuda=use_cuda)
        self.voice_name = files.name
        config = self.voice.config
        self.speakers: dict[str, int] = dict(config.speaker_id_map) if config.num_speakers > 1 else {}
        self.voice_aliases = dict(voice_aliases or {})
        for alias, target in self.voice_aliases.items():
            if target != self.voice_name and target not in self.speakers:
                raise ValueError(f"voice alias {alias!r} names {target!r}, which this voice does not have")
        load_seconds = time.perf_counter() - start
        logger.info(
            "voice loaded family=%s gpu=%s voice=%s kind=tts sample_rate=%d speakers=%d cuda=%s load_seconds=%.2f",
            family, gpu, self.voice_name, config.sample_rate, config.num_speakers, use_cuda, load_seconds,
            extra={"family": family, "gpu": gpu, "model_source": model_source, "kind": self.kind,
                   "voice": self.voice_name, "load_seconds": round(load_seconds, 3)},
        )

    # -- checks -----------------------------------------------------------
    def _speaker(self, voice_id: str | None) -> tuple[int | None, str]:
        """The speaker id piper gets (None: the voice's default) and the voice named in the meta."""
        config = self.voice.config
        default_name = next((n for n, i in self.speakers.items() if i == config.default_speaker_id), self.voice_name)
        if voice_id is None:
            return None, default_name
        wanted = self.voice_aliases.get(voice_id, voice_id)
        if wanted == self.voice_name:
            return None, default_name
        if wanted in self.speakers:
            return self.speakers[wanted], wanted
        if self.speakers and wanted.isdigit() and int(wanted) < config.num_speakers:
            number = int(wanted)
            return number, next((n for n, i in self.speakers.items() if i == number), wanted)
        names = [self.voice_name, *self.voice_aliases, *self.speakers]
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise InvalidJobError("voice_id", f"this app's voice is {self.voice_name!r}; allowed: null or one of {shown}")

    def check(self, job: SpeechJob) -> VoicePlan:
        """Refuse what this voice cannot do; return how to speak the job."""
        check_task(job)
        job.prompt = check_prompt(job.prompt)
        for name, neutral in NEUTRAL_SETTINGS.items():
            value = getattr(job, name)
            checked = check_flag(name, value) if name == "use_speaker_boost" else check_unit(name, value)
            if checked is not None and checked != neutral:
                raise InvalidJobError(name, f"the local voice cannot vary {name}; allowed: null or "
                                            f"{json.dumps(neutral)} (ElevenLabs' default)")
        stability = check_unit("stability", job.stability)
        spread = 2.0 * (1.0 - (DEFAULT_STABILITY if stability is None else stability))
        speaker_id, voice = self._speaker(job.voice_id)
        config = self.voice.config
        return VoicePlan(speaker_id, voice, config.noise_scale * spread, config.noise_w_scale * spread)

    # -- hooks ------------------------------------------------------------
    def produce(self, job: SpeechJob, on_step: OnStep | None, prepared: Any = None) -> Speech:
        from piper import SynthesisConfig

        plan = self.check(job)
        rate = self.voice.config.sample_rate
        sentences = [s for s in self.voice.phonemize(job.prompt) if s]
        if not sentences:
            raise InvalidJobError("prompt", "the text has nothing this voice can speak")
        syn = SynthesisConfig(speaker_id=plan.speaker_id, noise_scale=plan.noise_scale, noise_w_scale=plan.noise_w_scale)
        gap = np.zeros(int(round(SENTENCE_SILENCE * rate)), dtype=np.int16)
        cap = int(self.max_audio_seconds * rate)
        pieces: list[np.ndarray] = []
        samples = 0
        for index, phonemes in enumerate(sentences):
            ids = self.voice.phonemes_to_ids(phonemes)
            audio = np.asarray(self.voice.phoneme_ids_to_audio(ids, syn), dtype=np.float32).reshape(-1)
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            audio = audio / peak if peak > 1e-8 else np.zeros_like(audio)  # piper's own normalisation
            pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
            if pieces:
                pieces.append(gap)
            pieces.append(pcm)
            samples += pcm.size + (gap.size if index else 0)
            if samples > cap:
                raise InvalidJobError("prompt", f"the speech would last more than {self.max_audio_seconds:g} s; "
                                                "send shorter text")
            if on_step is not None:
                on_step(index + 1, len(sentences))  # a cancelled task stops here, between sentences
        pcm_all = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
        return Speech(pcm_all.astype("<i2").tobytes(), rate, plan.voice)

    def package(self, job: SpeechJob, produced: Speech) -> tuple[list[Packaged], dict[str, Any]]:
        meta = {"duration_seconds": round(produced.duration_seconds, 3), "format": "wav",
                "sample_rate": produced.sample_rate, "voice": produced.voice}
        return [Packaged(wav_bytes(produced.pcm, produced.sample_rate), "audio/wav", "wav", dict(meta))], meta

    def loaded(self) -> bool:
        return getattr(self, "voice", None) is not None

    def facts(self) -> dict[str, Any]:
        config = self.voice.config
        return {
            "tasks": [TASK],
            "engine": "piper",
            "voice": self.voice_name,
            "speakers": sorted(self.speakers),
            "voice_aliases": sorted(self.voice_aliases),
            "sample_rate": config.sample_rate,
            "language": config.espeak_voice,
            "max_audio_seconds": self.max_audio_seconds,
            "audio_parameters": ["voice_id", "stability"],
        }


# -- ElevenLabs -----------------------------------------------------------------------
@dataclass
class VendorAudio:
    """What ElevenLabs sent: MP3 bytes and what mutagen read from them."""

    data: bytes
    duration_seconds: float
    sample_rate: int
    voice: str


_URL = re.compile(r"https?://\S+")
_SECRETISH = re.compile(r"\b(?:sk_[A-Za-z0-9]+|[A-Za-z0-9]{32,})\b")


def sanitise(text: str, secret: str | None = None, limit: int = 160) -> str:
    """A vendor's message fit for a client: one line, no URLs, nothing key-like, short."""
    if secret:
        text = text.replace(secret, "[key]")
    text = _SECRETISH.sub("[redacted]", _URL.sub("[url]", " ".join(str(text).split())))
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def vendor_message(body: Any) -> str:
    """The human part of an ElevenLabs error body: ``{"detail": {"status", "message"}}`` or FastAPI's
    ``{"detail": [{"loc", "msg"}]}``."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        message = str(detail.get("message") or detail.get("status") or "")
        status = detail.get("status")
        return f"{status}: {message}" if status and message and status != message else message
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return f"{loc}: {first.get('msg', '')}" if loc else str(first.get("msg", ""))
    return str(detail or "")


def vendor_status(body: Any) -> str | None:
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail.get("status") if isinstance(detail, dict) else None


def retry_after(headers: dict[str, str] | None) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), capped; None when absent or unreadable."""
    value = {k.lower(): v for k, v in (headers or {}).items()}.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def map_api_error(status: int | None, body: Any, headers: dict[str, str] | None, secret: str | None) -> VendorError:
    """An ElevenLabs HTTP error as the VendorError the ingress answers with."""
    detail = sanitise(vendor_message(body), secret)
    code = status or 0
    if code == 429:
        return VendorError(VENDOR, "rate_limited", detail, retry_after(headers))
    if code == 401 and vendor_status(body) == "quota_exceeded":
        return VendorError(VENDOR, "unavailable", "the service's ElevenLabs quota is used up", retry_after(headers))
    if code in (401, 403):
        return VendorError(VENDOR, "credentials")
    if code >= 500 or code == 0:
        return VendorError(VENDOR, "unavailable", "", retry_after(headers))
    return VendorError(VENDOR, "rejected", detail or f"HTTP {code}")


def mp3_facts(data: bytes) -> tuple[float, int]:
    """(duration in seconds, sample rate) of MP3 bytes, read by mutagen; ValueError when it is not MP3."""
    from mutagen.mp3 import MP3

    try:
        info = MP3(io.BytesIO(data)).info
    except Exception as exc:
        raise ValueError(f"not an MP3 stream ({type(exc).__name__})") from None
    length = float(getattr(info, "length", 0.0) or 0.0)
    if length <= 0:
        raise ValueError("an MP3 stream without audio")
    return length, int(getattr(info, "sample_rate", 0) or 0)


class ElevenLabsSpeechFamily(FamilyBase[SpeechJob]):
    """Serve deployment that speaks through ElevenLabs (one ``model_id``); it holds no model.

    ``revision``, ``dtype`` and ``max_side`` are accepted because the builder passes them to every
    kind, and ignored. ``settings`` lets tests inject vendor settings (default: from the environment).
    """

    kind = "tts_vendor"
    output_folder = "audio"

    def __init__(
        self,
        model_source: str = "eleven_multilingual_v2",
        *,
        revision: str | None = None,
        dtype: str = "auto",
        storage: StorageSettings | None = None,
        family: str = "",
        gpu: str = "",
        store: ObjectStore | None = None,
        max_side: int = MAX_SIDE,
        stall_seconds: float = STALL_SECONDS,
        default_voice_id: str = DEFAULT_VOICE_ID,
        output_format: str = OUTPUT_FORMAT,
        max_bytes: int = MAX_AUDIO_BYTES,
        settings: VendorSettings | None = None,
    ):
        from deployments.vendors import VendorSettings

        super().__init__(family=family, gpu=gpu, storage=storage, store=store, stall_seconds=stall_seconds)
        if not _VOICE_ID.fullmatch(default_voice_id):
            raise ValueError(f"default_voice_id {default_voice_id!r} is not a voice id")
        if not output_format.startswith("mp3_"):
            raise ValueError("output_format must be an mp3_* format (the family stores audio/mpeg)")
        self.model_id = model_source
        self.default_voice_id = default_voice_id
        self.output_format = output_format
        self.max_bytes = max_bytes
        self.endpoint = (settings or VendorSettings()).endpoint("elevenlabs")
        logger.info("vendor speech ready family=%s gpu=%s kind=tts_vendor model_id=%s configured=%s",
                    family, gpu, self.model_id, bool(self.endpoint.api_key),
                    extra={"family": family, "gpu": gpu, "kind": self.kind, "model_id": self.model_id})

    # -- checks -----------------------------------------------------------
    def check(self, job: SpeechJob) -> tuple[str, dict[str, Any]]:
        """The voice id and the ``voice_settings`` fields to send (only those the job sets)."""
        check_task(job)
        job.prompt = check_prompt(job.prompt)
        voice_id = job.voice_id if job.voice_id is not None else self.default_voice_id
        if not isinstance(voice_id, str) or not _VOICE_ID.fullmatch(voice_id):
            raise InvalidJobError("voice_id", "allowed: an ElevenLabs voice id (1..64 of A-Z, a-z, 0-9, _ and -)")
        settings: dict[str, Any] = {}
        for name in ("stability", "similarity_boost", "style"):
            value = check_unit(name, getattr(job, name))
            if value is not None:
                settings[name] = value
        boost = check_flag("use_speaker_boost", job.use_speaker_boost)
        if boost is not None:
            settings["use_speaker_boost"] = boost
        return voice_id, settings

    # -- hooks ------------------------------------------------------------
    async def prepare(self, job: SpeechJob) -> tuple[str, dict[str, Any]]:
        """The job's checks, before anything is called: the voice and its settings."""
        return self.check(job)

    def produce(self, job: SpeechJob, on_step: OnStep | None, prepared: Any = None) -> tuple[str, dict[str, Any]]:
        """Nothing runs here (no model): the call is IO, made in ``finish`` outside the job lock so
        that calls to the vendor overlap up to the deployment's ``max_ongoing_requests``."""
        return prepared

    async def finish(self, job: SpeechJob, produced: Any, prepared: Any = None) -> VendorAudio:
        """The vendor call: MP3 bytes, checked."""
        voice_id, settings = produced
        if not self.endpoint.api_key:
            raise VendorError(VENDOR, "credentials", "no ElevenLabs key is configured for this service")
        timeout = self.endpoint.timeout_seconds
        start = time.perf_counter()
        try:
            data = await asyncio.wait_for(self._convert(job.prompt, voice_id, settings), timeout)
        except TimeoutError:
            raise VendorError(VENDOR, "timeout", f"no audio within {timeout:g} s") from None
        try:
            duration, sample_rate = mp3_facts(data)
        except ValueError as exc:
            logger.warning("vendor audio unreadable request_id=%s: %s", job.request_id, exc)
            raise VendorError(VENDOR, "unavailable", "the vendor sent audio that is not a valid MP3") from None
        logger.info("vendor speech request_id=%s model_id=%s bytes=%d duration_seconds=%.2f call_seconds=%.2f",
                    job.request_id, self.model_id, len(data), duration, time.perf_counter() - start,
                    extra={"studio_task_id": job.request_id, "model_id": self.model_id, "bytes": len(data)})
        return VendorAudio(data, duration, sample_rate, voice_id)

    async def _convert(self, text: str, voice_id: str, settings: dict[str, Any]) -> bytes:
        """One ``text_to_speech.convert`` call, its errors as ``VendorError``."""
        import httpx
        from elevenlabs import AsyncElevenLabs, VoiceSettings
        from elevenlabs.core.api_error import ApiError

        endpoint = self.endpoint
        kwargs: dict[str, Any] = {"text": text, "model_id": self.model_id, "output_format": self.output_format,
                                  "request_options": {"max_retries": 0}}
        if settings:
            kwargs["voice_settings"] = VoiceSettings(**settings)
        chunks: list[bytes] = []
        size = 0
        try:
            async with httpx.AsyncClient(timeout=endpoint.timeout_seconds, follow_redirects=False) as http:
                client_kwargs: dict[str, Any] = {"api_key": endpoint.api_key, "httpx_client": http,
                                                 "timeout": endpoint.timeout_seconds}
                if endpoint.base_url:
                    client_kwargs["base_url"] = endpoint.base_url
                client = AsyncElevenLabs(**client_kwargs)
                async for chunk in client.text_to_speech.convert(voice_id, **kwargs):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise VendorError(VENDOR, "unavailable", f"the audio exceeded {self.max_bytes // 2**20} MB")
                    chunks.append(chunk)
        except ApiError as exc:
            error = map_api_error(exc.status_code, exc.body, exc.headers, endpoint.api_key)
            logger.warning("ElevenLabs refused the call: status=%s reason=%s", exc.status_code, error.reason)
            raise error from None
        except httpx.TimeoutException:
            raise VendorError(VENDOR, "timeout", f"no audio within {endpoint.timeout_seconds:g} s") from None
        except httpx.HTTPError as exc:
            logger.warning("ElevenLabs could not be reached: %s", type(exc).__name__)
            raise VendorError(VENDOR, "unavailable", "could not be reached") from None
        if not chunks:
            raise VendorError(VENDOR, "unavailable", "the vendor sent no audio")
        return b"".join(chunks)

    def package(self, job: SpeechJob, produced: VendorAudio) -> tuple[list[Packaged], dict[str, Any]]:
        meta = {"duration_seconds": round(produced.duration_seconds, 3), "format": "mp3",
                "sample_rate": produced.sample_rate, "voice": produced.voice}
        return [Packaged(produced.data, "audio/mpeg", "mp3", dict(meta))], meta

    def loaded(self) -> bool:
        """Always: a missing key is each call's 502 (``VendorError``), not a replica Serve should restart."""
        return True

    def facts(self) -> dict[str, Any]:
        return {
            "tasks": ["tts_elevenlabs"],
            "engine": "elevenlabs",
            "model_id": self.model_id,
            "default_voice_id": self.default_voice_id,
            "output_format": self.output_format,
            "configured": bool(self.endpoint.api_key),
            "audio_parameters": ["voice_id", "stability", "similarity_boost", "style", "use_speaker_boost"],
        }
