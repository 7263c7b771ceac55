"""Request schema of ``POST getTextToSpeech``.

The route runs through the same machinery as the image routes (app rules, synchronous run or
async task, webhook), so the request carries the fields that machinery reads: ``app_id``,
``celery``, ``inference_type``, ``reference_id``, ``priority``, ``webhook``, ``track_id`` (the
same definitions and bounds as :class:`~ingress.contract.schemas.generation.GenerationRequest`)
and ``batch``, which is always 1 (one audio file per call).

Decision: ``generate_audio: false`` is a 422. This route's only product is the audio file; a
call that asks for none would produce nothing, so it is refused rather than answered empty.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from deployments.catalog import GpuType
from ingress.contract.schemas.generation import Flag, _yes_no

MIN_PROMPT_CHARS = 10
MAX_PROMPT_CHARS = 2500
#: ``voice_id``: an ElevenLabs voice id (20 letters and digits) or a local voice name (``en_US-lessac-medium``).
VOICE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,100}$"


def _audio_wanted(value: Any) -> Any:
    value = _yes_no(value)
    if value is False:
        raise PydanticCustomError(
            "generate_audio_false",
            "false would produce nothing: this route only makes audio; send true or leave it out",
        )
    return value


#: ``generate_audio``: true (or yes/1); false is refused with a message saying why.
AudioWanted = Annotated[Literal[True], BeforeValidator(_audio_wanted)]


class AudioParameters(BaseModel):
    """Voice settings (ElevenLabs' names). Left out: the app's defaults. A setting the app's engine
    cannot honour (e.g. ``style`` on a local engine) is a 422, never ignored."""

    model_config = ConfigDict(extra="ignore")

    voice_id: str | None = Field(
        None, pattern=VOICE_ID_PATTERN,
        description="The voice: an ElevenLabs voice id, or a local voice's name; 1..100 of A-Z a-z 0-9 . _ -. "
        "Default: the app's voice.",
    )
    stability: float | None = Field(None, ge=0, le=1, description="0..1: higher is steadier, lower more expressive.")
    similarity_boost: float | None = Field(None, ge=0, le=1, description="0..1: how closely to keep to the voice.")
    style: float | None = Field(None, ge=0, le=1, description="0..1 style exaggeration, or null (the voice's own).")
    use_speaker_boost: Flag | None = Field(None, description="Boost similarity to the original speaker.")


class TextToSpeechRequest(BaseModel):
    """Body of ``POST getTextToSpeech``: the text to speak and the voice."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    app_id: str = Field(
        description="Which speech app to run; `GET apps` lists the valid ids.", min_length=1, max_length=64
    )
    prompt: str = Field(
        min_length=MIN_PROMPT_CHARS, max_length=MAX_PROMPT_CHARS, pattern=r"\S",
        description=f"The text to speak, {MIN_PROMPT_CHARS}..{MAX_PROMPT_CHARS} characters, not all blank.",
    )
    generate_audio: AudioWanted = Field(
        True, description="Make the audio file (default true). false is refused: it would produce nothing."
    )
    audio_parameters: AudioParameters | None = Field(None, description="Voice settings; left out: the app's.")
    batch: Literal[1] = Field(1, description="One audio file per call; allowed: 1.")
    celery: Flag = Field(False, description="true: queue the job and return a task_id at once.")
    inference_type: GpuType | None = Field(
        None, description="GPU type to run on: a10g, a100 or h100; default: the app's first."
    )
    reference_id: str | None = Field(
        None, min_length=1, max_length=200, description="Your own id for an async task; status lookups accept it as refID."
    )
    priority: int | None = Field(
        None, ge=0, le=9, description="Async tasks: 0..9, higher runs first among your own queued tasks; default 5."
    )
    webhook: str | None = Field(
        None, max_length=2048, description="Async tasks: http(s) URL POSTed the final envelope, signed (Standard Webhooks)."
    )
    track_id: str | None = Field(None, max_length=200, description="Echoed as `track_id` in the webhook call.")
