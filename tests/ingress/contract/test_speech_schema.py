"""The Text To Speech request schema: bounds, the async fields the task machinery reads, generate_audio."""

from __future__ import annotations

import pytest

from ingress.contract.errors import ValidationFailed
from ingress.contract.routes.parsing import parse_strict
from ingress.contract.schemas.chat import parse_request
from ingress.contract.schemas.generation import GenerationRequest
from ingress.contract.schemas.speech import AudioParameters, TextToSpeechRequest

PROMPT = "Hello there, world."


def parse(**fields) -> TextToSpeechRequest:
    raw = {"app_id": "tts-app", "prompt": PROMPT}
    raw.update(fields)
    return parse_strict(TextToSpeechRequest, raw)


def refused(**fields) -> str:
    with pytest.raises(ValidationFailed) as info:
        parse(**fields)
    return info.value.message


def test_defaults():
    req = parse()
    assert (req.app_id, req.prompt, req.generate_audio, req.batch, req.celery) == ("tts-app", PROMPT, True, 1, False)
    assert req.audio_parameters is None and req.inference_type is None
    assert (req.reference_id, req.priority, req.webhook, req.track_id) == (None, None, None, None)


@pytest.mark.parametrize("length,ok", [(9, False), (10, True), (2500, True), (2501, False)])
def test_prompt_length(length, ok):
    prompt = "a" * length
    if ok:
        assert parse(prompt=prompt).prompt == prompt
    else:
        message = refused(prompt=prompt)
        assert message.startswith("prompt: String should have at ") and "allowed: 10..2500 characters" in message


def test_prompt_required():
    with pytest.raises(ValidationFailed, match="prompt: Field required"):
        parse_strict(TextToSpeechRequest, {"app_id": "tts-app"})


@pytest.mark.parametrize("name", ["stability", "similarity_boost", "style"])
def test_voice_settings_bounds(name):
    assert getattr(parse(audio_parameters={name: 0}).audio_parameters, name) == 0
    assert getattr(parse(audio_parameters={name: 1}).audio_parameters, name) == 1
    for bad, rule in ((-0.1, "greater than or equal to 0"), (1.1, "less than or equal to 1")):
        assert refused(audio_parameters={name: bad}) == f"audio_parameters: Input should be {rule} (got {bad})"
        with pytest.raises(ValidationFailed) as info:  # the full-path parser names the setting itself
            parse_request(TextToSpeechRequest, {"app_id": "a", "prompt": PROMPT, "audio_parameters": {name: bad}})
        assert info.value.message == f"audio_parameters.{name}: Input should be {rule} (got {bad})"


def test_style_may_be_null_and_speaker_boost_is_a_flag():
    params = parse(audio_parameters={"style": None, "use_speaker_boost": "yes", "voice_id": "en_US-lessac-medium"})
    assert params.audio_parameters == AudioParameters(voice_id="en_US-lessac-medium", use_speaker_boost=True)


def test_voice_id_charset_and_length():
    assert parse(audio_parameters={"voice_id": "21m00Tcm4TlvDq8ikWAM"}).audio_parameters.voice_id == "21m00Tcm4TlvDq8ikWAM"
    assert parse(audio_parameters={"voice_id": "v" * 100}).audio_parameters is not None
    for bad in ("v" * 101, "", "../voice", "a b"):
        assert refused(audio_parameters={"voice_id": bad}).startswith("audio_parameters: String should")


def test_generate_audio_false_is_refused():
    assert parse(generate_audio=True).generate_audio is True
    assert parse(generate_audio="yes").generate_audio is True
    for false in (False, "no"):
        message = refused(generate_audio=false)
        assert message.startswith("generate_audio: false would produce nothing: this route only makes audio")


def test_batch_is_one():
    assert parse(batch=1).batch == 1
    assert refused(batch=2).startswith("batch: Input should be 1")


def test_async_fields_match_the_generation_request():
    """The task machinery reads the same attributes with the same bounds as on image routes."""
    for name in ("celery", "inference_type", "reference_id", "priority", "webhook", "track_id", "app_id"):
        ours, theirs = TextToSpeechRequest.model_fields[name], GenerationRequest.model_fields[name]
        assert ours.annotation == theirs.annotation and ours.metadata == theirs.metadata, name
        assert ours.default == theirs.default, name
    req = parse(celery=True, reference_id="r1", priority=9, webhook="https://hooks.test/x", track_id="t",
                inference_type="a100")
    assert (req.celery, req.reference_id, req.priority, req.webhook, req.track_id, req.inference_type) == (
        True, "r1", 9, "https://hooks.test/x", "t", "a100")
    assert refused(priority=10).startswith("priority: Input should be less than or equal to 9")
    assert refused(inference_type="t4").startswith("inference_type: Input should be 'a10g', 'a100' or 'h100'")
    assert refused(webhook="h" * 2049).startswith("webhook: String should have at most 2048 characters")


def test_celery_takes_booleans_not_numbers():
    assert parse(celery="yes").celery is True
    assert refused(celery=1).startswith("celery: Input should be a valid boolean")


def test_every_field_is_documented():
    doc = TextToSpeechRequest.model_json_schema()
    for name, prop in doc["properties"].items():
        assert prop.get("description"), name
    assert doc["properties"]["prompt"]["minLength"] == 10 and doc["properties"]["prompt"]["maxLength"] == 2500
