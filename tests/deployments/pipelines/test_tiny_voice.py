from __future__ import annotations

import io
import json
import wave

import numpy as np
import pytest
from piper import PiperVoice, SynthesisConfig

from deployments.pipelines.tiny_voice import SAMPLE_RATE, TOKEN_SECONDS, VOICE_NAME, make_tiny_voice

SHORT = "Hello world."
LONG = "Hello world. This sentence is a good deal longer than the first one, and it has a clause."


@pytest.fixture(scope="module")
def voice_dir(tmp_path_factory):
    return make_tiny_voice(tmp_path_factory.mktemp("tiny-voice"))


@pytest.fixture(scope="module")
def voice(voice_dir) -> PiperVoice:
    return PiperVoice.load(voice_dir / f"{VOICE_NAME}.onnx")  # config: <model>.json, as for a real voice


def synthesize(voice: PiperVoice, text: str, **config) -> tuple[wave._wave_params, np.ndarray]:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        voice.synthesize_wav(text, out, SynthesisConfig(**config))
    buf.seek(0)
    with wave.open(buf, "rb") as wav:
        params = wav.getparams()
        samples = np.frombuffer(wav.readframes(params.nframes), dtype="<i2")
    return params, samples


def test_writes_piper_files_with_its_own_phoneme_map(voice_dir) -> None:
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    assert sorted(p.name for p in voice_dir.iterdir()) == [f"{VOICE_NAME}.onnx", f"{VOICE_NAME}.onnx.json"]
    config = json.loads((voice_dir / f"{VOICE_NAME}.onnx.json").read_text())
    assert config["audio"]["sample_rate"] == SAMPLE_RATE
    assert config["espeak"]["voice"] == "en-us" and config["phoneme_type"] == "espeak"
    assert config["num_speakers"] == 1
    assert config["phoneme_id_map"] == {k: list(v) for k, v in DEFAULT_PHONEME_ID_MAP.items()}


def test_loads_and_speaks_non_silent_16_bit_mono(voice) -> None:
    params, samples = synthesize(voice, SHORT)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, SAMPLE_RATE)
    assert np.abs(samples).max() > 30000  # piper normalises to full scale
    assert (samples != 0).mean() > 0.3  # beeps, with gaps, not one click


def test_length_is_the_phoneme_count_times_the_token_time(voice) -> None:
    phonemes = voice.phonemize(SHORT)
    tokens = sum(len(voice.phonemes_to_ids(s)) for s in phonemes)
    params, _ = synthesize(voice, SHORT)
    assert params.nframes == tokens * round(TOKEN_SECONDS * SAMPLE_RATE)


def test_duration_grows_with_text_and_length_scale(voice) -> None:
    short, _ = synthesize(voice, SHORT)
    long, _ = synthesize(voice, LONG)
    slow, _ = synthesize(voice, SHORT, length_scale=2.0)
    assert long.nframes > 3 * short.nframes
    assert slow.nframes == 2 * short.nframes


def test_pitch_depends_on_the_phoneme(voice) -> None:
    """Different phoneme ids sound at different pitches (the dominant frequency of one token)."""
    per_token = round(TOKEN_SECONDS * SAMPLE_RATE)

    def pitch(phoneme: str) -> float:
        audio = voice.phoneme_ids_to_audio([voice.config.phoneme_id_map[phoneme][0]], SynthesisConfig(noise_scale=0.0))
        spectrum = np.abs(np.fft.rfft(np.asarray(audio).reshape(-1)[:per_token], n=SAMPLE_RATE))
        return float(np.argmax(spectrum))

    assert abs(pitch("a") - (180 + 15 * 14)) <= 20
    assert abs(pitch("z") - (180 + 15 * 38)) <= 20


def test_deterministic_and_noise_changes_the_wave_not_the_length(voice) -> None:
    _, first = synthesize(voice, SHORT)
    _, again = synthesize(voice, SHORT)
    _, steady = synthesize(voice, SHORT, noise_scale=0.0)
    assert np.array_equal(first, again)
    assert steady.shape == first.shape and not np.array_equal(steady, first)


def test_a_multi_speaker_voice_takes_sid(tmp_path) -> None:
    make_tiny_voice(tmp_path, speakers=3)
    voice = PiperVoice.load(tmp_path / f"{VOICE_NAME}.onnx")
    assert voice.config.num_speakers == 3 and voice.config.speaker_id_map["speaker_2"] == 2
    _, zero = synthesize(voice, SHORT, speaker_id=0)
    _, two = synthesize(voice, SHORT, speaker_id=2)
    assert zero.shape == two.shape and not np.array_equal(zero, two)
