from __future__ import annotations

import asyncio
import io
import wave
from typing import Any

import numpy as np
import pytest
from mutagen.mp3 import MP3

from deployments.errors import InvalidJobError, TaskStopped, VendorError
from deployments.families.speech import (
    DEFAULT_VOICE_ID,
    ElevenLabsSpeechFamily,
    LocalSpeechFamily,
    retry_after,
    sanitise,
)
from deployments.pipelines.tiny_voice import SAMPLE_RATE, VOICE_NAME, make_tiny_voice
from deployments.types import SpeechJob
from deployments.vendors import VendorSettings
from tests.deployments.conftest import MemoryStore
from tests.support.fakes.elevenlabs import FakeElevenLabs

THREE_SENTENCES = "Hello there. This is the second sentence, with a clause. And a third one!"
ELEVEN_ID = "21m00Tcm4TlvDq8ikWAM"


def job(prompt: str = THREE_SENTENCES, request_id: str = "r-1", **kw) -> SpeechJob:
    return SpeechJob(task="tts", tenant="acme", request_id=request_id, prompt=prompt, **kw)


def refused(family, field: str, **kw) -> InvalidJobError:
    with pytest.raises(InvalidJobError) as info:
        family.produce(job(**kw), None) if isinstance(family, LocalSpeechFamily) else family.check(job(**kw))
    assert info.value.field == field
    return info.value


# -- the local piper voice ------------------------------------------------------------
@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory):
    return make_tiny_voice(tmp_path_factory.mktemp("tiny-voice"))


@pytest.fixture(scope="module")
def local(voice_dir) -> LocalSpeechFamily:
    store: Any = MemoryStore()
    return LocalSpeechFamily(str(voice_dir), store=store, family="piper", gpu="a10g", revision="ignored",
                             dtype="float16", max_side=1024, device="cpu",
                             voice_aliases={ELEVEN_ID: VOICE_NAME})


def stored_wav(family: LocalSpeechFamily, j: SpeechJob) -> tuple[wave._wave_params, np.ndarray, dict, dict]:
    result = asyncio.run(family.run(j))
    assert len(result.outputs) == 1
    output = result.outputs[0]
    assert output.key == f"tenants/acme/audio/{j.request_id}/0.wav"
    store: Any = family.store
    data, content_type = store.objects[output.key]
    assert content_type == "audio/wav" == output.content_type
    with wave.open(io.BytesIO(data), "rb") as wav:
        params = wav.getparams()
        samples = np.frombuffer(wav.readframes(params.nframes), dtype="<i2")
    return params, samples, output.meta, result.meta


def test_local_voice_stores_a_playable_wav_with_its_duration(local) -> None:
    params, samples, meta, result_meta = stored_wav(local, job())
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, SAMPLE_RATE)
    assert params.nframes == samples.size > SAMPLE_RATE  # several seconds of beeps
    assert np.abs(samples).max() > 30000 and (samples != 0).mean() > 0.3
    assert meta == result_meta == {"duration_seconds": round(params.nframes / SAMPLE_RATE, 3), "format": "wav",
                                   "sample_rate": SAMPLE_RATE, "voice": VOICE_NAME}


def test_local_voice_reports_progress_per_sentence_and_grows_with_text(local) -> None:
    steps: list[tuple[int, int]] = []
    long = local.produce(job(), lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    short = local.produce(job("Hello there."), None)
    assert long.duration_seconds > 3 * short.duration_seconds


def test_local_voice_stops_between_sentences(local) -> None:
    calls = []

    def cancel(done: int, total: int) -> None:
        calls.append(done)
        raise TaskStopped("revoked")

    with pytest.raises(TaskStopped):
        local.produce(job(), cancel)
    assert calls == [1]


def test_stability_maps_to_piper_noise(local) -> None:
    steady = local.check(job(stability=1.0))
    neutral = local.check(job())
    lively = local.check(job(stability=0.0))
    config = local.voice.config
    assert steady.noise_scale == steady.noise_w_scale == 0.0
    assert (neutral.noise_scale, neutral.noise_w_scale) == pytest.approx((config.noise_scale, config.noise_w_scale))
    assert lively.noise_scale == pytest.approx(2 * config.noise_scale)
    a, b = local.produce(job(stability=1.0), None), local.produce(job(stability=0.0), None)
    assert len(a.pcm) == len(b.pcm) and a.pcm != b.pcm


def test_settings_the_voice_cannot_honour_are_refused_by_name(local) -> None:
    assert "similarity_boost" in refused(local, "similarity_boost", similarity_boost=0.2).public
    refused(local, "style", style=0.4)
    refused(local, "use_speaker_boost", use_speaker_boost=False)
    refused(local, "stability", stability=1.5)
    refused(local, "voice_id", voice_id="EXAVITQu4vr4xnSDxMaL")
    refused(local, "prompt", prompt="too short")
    refused(local, "prompt", prompt="x" * 2501)
    refused(local, "prompt", prompt=" " * 20)
    # ElevenLabs' defaults (the seed's example) ask for nothing piper lacks; the aliased id is this voice
    plan = local.check(job(voice_id=ELEVEN_ID, stability=0.5, similarity_boost=0.75, style=0.0, use_speaker_boost=True))
    assert plan.voice == VOICE_NAME and plan.speaker_id is None


def test_other_tasks_are_refused(local) -> None:
    with pytest.raises(InvalidJobError) as info:
        local.produce(SpeechJob(task="text2img", tenant="acme", request_id="r", prompt=THREE_SENTENCES), None)
    assert info.value.field == "task"


def test_duration_cap(voice_dir) -> None:
    store: Any = MemoryStore()
    capped = LocalSpeechFamily(str(voice_dir), store=store, device="cpu", max_audio_seconds=1.0)
    with pytest.raises(InvalidJobError) as info:
        capped.produce(job(), None)
    assert info.value.field == "prompt" and "1 s" in info.value.message


def test_multi_speaker_voice_id_picks_the_speaker(tmp_path) -> None:
    make_tiny_voice(tmp_path, speakers=3)
    store: Any = MemoryStore()
    family = LocalSpeechFamily(str(tmp_path), store=store, device="cpu")
    assert family.facts()["speakers"] == ["speaker_0", "speaker_1", "speaker_2"]
    default = family.produce(job(), None)
    second = family.produce(job(voice_id="speaker_2"), None)
    numbered = family.produce(job(voice_id="2"), None)
    assert default.voice == "speaker_0" and second.voice == numbered.voice == "speaker_2"
    assert second.pcm == numbered.pcm != default.pcm
    refused(family, "voice_id", voice_id="speaker_9")


def test_local_info_and_health(local) -> None:
    info = local.info()
    assert info["kind"] == "tts" and info["voice"] == VOICE_NAME and info["sample_rate"] == SAMPLE_RATE
    assert info["audio_parameters"] == ["voice_id", "stability"]
    asyncio.run(local.check_health())


# -- ElevenLabs, against the local fake -------------------------------------------------
@pytest.fixture(scope="module")
def fake():
    with FakeElevenLabs() as server:
        yield server


def vendor(fake: FakeElevenLabs, *, key: str | None = None, timeout: float = 5.0,
           max_bytes: int = 2**20) -> ElevenLabsSpeechFamily:
    settings = VendorSettings(elevenlabs_api_key=fake.api_key if key is None else key or None,
                              elevenlabs_base_url=fake.base_url, vendor_timeout_seconds=timeout)
    store: Any = MemoryStore()
    return ElevenLabsSpeechFamily("eleven_multilingual_v2", store=store, family="elevenlabs", gpu="cpu",
                                  revision=None, dtype="auto", max_side=1024, settings=settings, max_bytes=max_bytes)


def test_vendor_sends_the_documented_request_and_stores_the_mp3(fake) -> None:
    family = vendor(fake)
    fake.requests.clear()
    text = "A sentence of speech for the vendor to read aloud, about sixty-five characters."
    result = asyncio.run(family.run(job(text, "r-vendor", voice_id="EXAVITQu4vr4xnSDxMaL", stability=0.3,
                                        similarity_boost=0.8, style=0.1, use_speaker_boost=False)))
    [sent] = fake.requests
    assert sent.method == "POST" and sent.path == "/v1/text-to-speech/EXAVITQu4vr4xnSDxMaL"
    assert sent.query == {"output_format": "mp3_44100_128"}
    assert sent.headers["xi-api-key"] == fake.api_key
    assert sent.body == {"text": text, "model_id": "eleven_multilingual_v2",
                         "voice_settings": {"stability": 0.3, "similarity_boost": 0.8, "style": 0.1,
                                            "use_speaker_boost": False}}
    [output] = result.outputs
    assert output.key == "tenants/acme/audio/r-vendor/0.mp3" and output.content_type == "audio/mpeg"
    store: Any = family.store
    data, content_type = store.objects[output.key]
    assert content_type == "audio/mpeg"
    info: Any = MP3(io.BytesIO(data)).info
    assert info.length == pytest.approx(len(text) / 15, abs=0.1)
    assert result.meta == output.meta == {"duration_seconds": round(info.length, 3), "format": "mp3",
                                          "sample_rate": 44100, "voice": "EXAVITQu4vr4xnSDxMaL"}


def test_vendor_defaults_voice_and_leaves_settings_to_the_voice(fake) -> None:
    family = vendor(fake)
    fake.requests.clear()
    checked = asyncio.run(family.prepare(job()))  # checks only: nothing sent under the job lock
    assert fake.requests == [] and family.produce(job(), None, checked) is checked
    audio = asyncio.run(family.finish(job(), checked))  # the call, outside the lock
    [sent] = fake.requests
    assert sent.voice_id == DEFAULT_VOICE_ID and "voice_settings" not in sent.body
    assert audio.duration_seconds == pytest.approx(len(THREE_SENTENCES) / 15, abs=0.1)


@pytest.mark.parametrize(
    ("script", "reason", "detail", "after"),
    [
        (lambda f: f.rate_limit(7), "rate_limited", "", 7.0),
        (lambda f: f.server_error(), "unavailable", "", None),
        (lambda f: f.server_error(503), "unavailable", "", None),
        (lambda f: f.unauthorized(), "credentials", "", None),
        (lambda f: f.unprocessable("Input should be a valid string"), "rejected", "text: Input should be a valid", None),
        (lambda f: f.bad_request("voice_not_found", "A voice with that id was not found."), "rejected",
         "voice_not_found: A voice", None),
        (lambda f: f.bad_request("quota_exceeded", "You have run out of credits.", code=401), "unavailable", "quota",
         None),
    ],
)
def test_vendor_errors_map_to_reasons(fake, script, reason, detail, after) -> None:
    family = vendor(fake)
    script(fake)
    with pytest.raises(VendorError) as info:
        asyncio.run(family.run(job()))
    error = info.value
    assert (error.vendor, error.reason, error.retry_after) == ("ElevenLabs", reason, after)
    assert detail in error.detail
    assert fake.base_url not in error.public and fake.api_key not in error.public
    store: Any = family.store
    assert store.objects == {}


def test_a_wrong_key_is_a_credentials_error(fake) -> None:
    with pytest.raises(VendorError) as info:
        asyncio.run(vendor(fake, key="not-the-key").run(job()))
    assert info.value.reason == "credentials"


def test_a_slow_vendor_times_out(fake) -> None:
    family = vendor(fake, timeout=0.5)
    fake.slow(3)
    with pytest.raises(VendorError) as info:
        asyncio.run(family.run(job()))
    assert info.value.reason == "timeout"


def test_audio_beyond_the_byte_cap_is_refused(fake) -> None:
    with pytest.raises(VendorError) as info:
        asyncio.run(vendor(fake, max_bytes=4096).run(job()))
    assert info.value.reason == "unavailable" and "exceeded" in info.value.detail


def test_no_key_is_a_credentials_error_per_call_not_a_dead_replica(fake) -> None:
    family = vendor(fake, key="")
    assert family.loaded() and family.info()["configured"] is False  # Serve must not restart it for a key
    fake.requests.clear()
    with pytest.raises(VendorError) as info:
        asyncio.run(family.run(job()))
    assert info.value.reason == "credentials" and fake.requests == []


def test_vendor_checks_its_inputs_before_calling(fake) -> None:
    family = vendor(fake)
    refused(family, "voice_id", voice_id="../../v1/user")
    refused(family, "stability", stability=2)
    refused(family, "style", style=-0.1)
    refused(family, "use_speaker_boost", use_speaker_boost="yes")
    refused(family, "prompt", prompt="short")


def test_vendor_facts_name_the_model_never_the_key(fake) -> None:
    family = vendor(fake)
    info = family.info()
    assert info["kind"] == "tts_vendor" and info["model_id"] == "eleven_multilingual_v2" and family.loaded()
    assert fake.api_key not in repr(info) and fake.base_url not in repr(info)


def test_sanitise_and_retry_after() -> None:
    text = "bad\nrequest at https://api.example.com/v1/x with key sk_abcdef123456 and " + "A" * 40
    clean = sanitise(text, secret="sk_abcdef123456")
    assert "https://" not in clean and "sk_" not in clean and "A" * 40 not in clean and "\n" not in clean
    assert len(sanitise("word " * 100)) == 160
    assert retry_after({"Retry-After": "12"}) == 12.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after({}) is None and retry_after({"Retry-After": "soon"}) is None


# -- async tasks: the job captured at submit runs through FamilyBase.run_task --------------
def test_an_async_task_speaks_and_publishes_per_attempt_audio(voice_dir, tmp_path) -> None:
    from deployments.types import TaskRef, job_to_payload
    from storage.factory import open_store
    from storage.settings import StorageSettings
    from storage.tasks import TaskRecord, new_task_id

    store = open_store(StorageSettings(backend="local", local_root=tmp_path, signing_secret="s"))
    family = LocalSpeechFamily(str(voice_dir), store=store, family="piper", gpu="a10g", device="cpu")

    def dispatch(record: TaskRecord) -> None:
        record.attempts = 1
        record.hold_lease("dispatch", 60)

    def submit(j: SpeechJob) -> str:
        tid = new_task_id()
        data, images = job_to_payload(j)
        data["request_id"] = tid
        family.tasks.create(TaskRecord(task_id=tid, tenant="acme", app_id="a", route="getTextToSpeech", family="piper",
                                       gpu="a10g", deployment="piper-a10g"), data, images)
        family.tasks.update("acme", tid, dispatch)
        return tid

    tid = submit(job(stability=0.9))
    assert asyncio.run(family.run_task(TaskRef("acme", tid, 1))) == "SUCCESS"
    record = family.tasks.get("acme", tid)
    assert record is not None and record.output_keys == [f"tenants/acme/audio/{tid}/1/0.wav"]
    with wave.open(io.BytesIO(store.get(record.output_keys[0])), "rb") as wav:
        assert record.output_meta["duration_seconds"] == round(wav.getnframes() / wav.getframerate(), 3)

    refused_tid = submit(job(style=0.9))
    assert asyncio.run(family.run_task(TaskRef("acme", refused_tid, 1))) == "FAILURE"
    failed = family.tasks.get("acme", refused_tid)
    assert failed is not None and failed.error == "ValidationError" and "style" in (failed.error_data or "")


def test_vendor_calls_overlap_outside_the_job_lock(fake) -> None:
    """Two jobs on one replica: the vendor's 1 s each overlap (the call runs after the model lock)."""
    import time

    family = vendor(fake)
    fake.slow(1.0)
    fake.slow(1.0)

    async def both():
        return await asyncio.gather(family.run(job(request_id="a")), family.run(job(request_id="b")))

    started = time.monotonic()
    first, second = asyncio.run(both())
    assert time.monotonic() - started < 1.8 and first.outputs[0].key != second.outputs[0].key


def test_a_vendor_error_carries_the_contracts_error_type() -> None:
    for reason, error in (("rate_limited", "VendorRateLimited"), ("unavailable", "VendorUnavailable"),
                          ("timeout", "Timeout"), ("credentials", "UpstreamError"), ("rejected", "ValidationError")):
        assert VendorError("ElevenLabs", reason).error_type == error  # an async task's record says the same


def test_control_characters_and_lone_surrogates_are_spoken_around_not_a_500(local) -> None:
    """A JSON body can carry NULs and lone surrogates; espeak-ng's C API breaks on both."""
    for text in ("\x00\x01 hello there \x07", "\ud800 hello there \udfff"):
        result = asyncio.run(local.run(job(prompt=text, request_id="ctl")))
        assert result.meta["duration_seconds"] > 0.2
    assert refused(local, "prompt", prompt="\x00" * 12).message == "the text is blank"
