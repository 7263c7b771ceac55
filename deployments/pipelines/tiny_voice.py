"""A tiny piper voice with a DESIGNED ONNX graph: every phoneme id becomes a short tone.

:func:`make_tiny_voice` writes the same two files a real piper voice has (e.g.
``en_US-lessac-medium.onnx`` + ``en_US-lessac-medium.onnx.json``), loaded by the same
loader (``piper.PiperVoice.load``)::

    <target>/tiny-piper-voice.onnx        piper's model I/O (below)
    <target>/tiny-piper-voice.onnx.json   piper's voice config: audio.sample_rate 16000, espeak.voice "en-us",
                                          phoneme_type "espeak", piper's own default phoneme_id_map, inference defaults

Model I/O (what ``PiperVoice.phoneme_ids_to_audio`` feeds and reads):

* ``input`` int64 ``[1, N]`` phoneme ids, ``input_lengths`` int64 ``[1]``, ``scales`` float32 ``[3]`` =
  ``(noise_scale, length_scale, noise_w)``; ``sid`` int64 ``[1]`` only for a multi-speaker voice
  (``speakers > 1``; piper sends it only then);
* output float32 ``[1, 1, samples]``.

The graph is fixed arithmetic, not trained or random: each id lasts ``round(TOKEN_SECONDS *
sample_rate * length_scale)`` samples (so the audio grows with the number of phonemes and with
``length_scale``); ids 0..3 (pad, BOS, EOS, space) are silence, any other id is a sine at
``BASE_HZ + STEP_HZ * (id % 48)`` (+ ``SPEAKER_HZ`` per speaker id) under a half-sine envelope, with a
phase wobble whose depth is ``noise_scale`` (so stability settings change the waveform, deterministically).
It sounds like beeps, not speech: never present it as anything else. A real piper voice drops in
as its own two files (``<voice>.onnx`` + ``<voice>.onnx.json``) in the model directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

VOICE_NAME = "tiny-piper-voice"
SAMPLE_RATE = 16000
TOKEN_SECONDS = 0.04  # per phoneme id; piper puts a pad id after each phoneme, so ~0.08 s a phoneme
BASE_HZ = 180.0
STEP_HZ = 15.0
SPEAKER_HZ = 40.0
WOBBLE_HZ = 5.0
WOBBLE_SECONDS = 0.002  # phase wobble depth (seconds of time shift) at noise_scale 1
SILENT_IDS = 4  # ids below this are silent: "_" pad, "^" BOS, "$" EOS, " " space
AMPLITUDE = 0.5


def _graph(speakers: int):
    """The ONNX graph: ids -> tones (see the module docstring)."""
    from onnx import TensorProto, helper

    def const(name: str, value, dtype=TensorProto.FLOAT):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", dtype, [], [value]))

    samples_per_token = SAMPLE_RATE * TOKEN_SECONDS
    nodes = [
        const("per_token", samples_per_token),
        const("one_i", 1, TensorProto.INT64),
        const("zero_i", 0, TensorProto.INT64),
        const("silent_ids", SILENT_IDS, TensorProto.INT64),
        const("id_mod", 48, TensorProto.INT64),
        const("rate", float(SAMPLE_RATE)),
        const("base_hz", BASE_HZ),
        const("step_hz", STEP_HZ),
        const("two_pi", 2 * math.pi),
        const("pi", math.pi),
        const("wobble_hz", WOBBLE_HZ),
        const("wobble_s", WOBBLE_SECONDS),
        const("amplitude", AMPLITUDE),
        const("zero_f", 0.0),
        helper.make_node("Constant", [], ["idx0"], value=helper.make_tensor("idx0_v", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["idx1"], value=helper.make_tensor("idx1_v", TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], ["flat"], value=helper.make_tensor("flat_v", TensorProto.INT64, [1], [-1])),
        helper.make_node("Constant", [], ["out_shape"],
                         value=helper.make_tensor("out_shape_v", TensorProto.INT64, [3], [1, 1, -1])),
        # scales -> noise_scale, length_scale
        helper.make_node("Gather", ["scales", "idx0"], ["noise_1"], axis=0),
        helper.make_node("Gather", ["scales", "idx1"], ["length_1"], axis=0),
        helper.make_node("Squeeze", ["noise_1"], ["noise"]),
        helper.make_node("Squeeze", ["length_1"], ["length"]),
        # samples per id: round(per_token * length_scale), at least 1
        helper.make_node("Mul", ["per_token", "length"], ["len_f"]),
        helper.make_node("Round", ["len_f"], ["len_r"]),
        helper.make_node("Cast", ["len_r"], ["len_raw"], to=TensorProto.INT64),
        helper.make_node("Max", ["len_raw", "one_i"], ["token_len"]),
        # ids: [N]; total samples = N * token_len
        helper.make_node("Reshape", ["input", "flat"], ["ids"]),
        helper.make_node("Shape", ["ids"], ["n_1"]),
        helper.make_node("Squeeze", ["n_1"], ["n"]),
        helper.make_node("Mul", ["n", "token_len"], ["total"]),
        helper.make_node("Range", ["zero_i", "total", "one_i"], ["t_i"]),
        helper.make_node("Div", ["t_i", "token_len"], ["token_of_t"]),
        helper.make_node("Mod", ["t_i", "token_len"], ["local_i"]),
        helper.make_node("Gather", ["ids", "token_of_t"], ["id_of_t"], axis=0),
        # pitch per id (and speaker)
        helper.make_node("Mod", ["id_of_t", "id_mod"], ["id_m"]),
        helper.make_node("Cast", ["id_m"], ["id_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["id_f", "step_hz"], ["id_hz"]),
        helper.make_node("Add", ["id_hz", "base_hz"], ["hz_voice"]),
        # times in seconds
        helper.make_node("Cast", ["local_i"], ["local_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["local_f", "rate"], ["local_s"]),
        helper.make_node("Cast", ["t_i"], ["t_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["t_f", "rate"], ["t_s"]),
        # phase wobble: local_s + noise_scale * WOBBLE_SECONDS * sin(2 pi WOBBLE_HZ t)
        helper.make_node("Mul", ["two_pi", "wobble_hz"], ["w_rad"]),
        helper.make_node("Mul", ["t_s", "w_rad"], ["w_arg"]),
        helper.make_node("Sin", ["w_arg"], ["w_sin"]),
        helper.make_node("Mul", ["noise", "wobble_s"], ["w_depth"]),
        helper.make_node("Mul", ["w_sin", "w_depth"], ["w_shift"]),
        helper.make_node("Add", ["local_s", "w_shift"], ["tone_s"]),
        helper.make_node("Mul", ["hz", "two_pi"], ["rad_s"]),
        helper.make_node("Mul", ["rad_s", "tone_s"], ["phase"]),
        helper.make_node("Sin", ["phase"], ["tone"]),
        # half-sine envelope per id: sin(pi * local / token_len)
        helper.make_node("Cast", ["token_len"], ["token_len_f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["local_f", "token_len_f"], ["frac"]),
        helper.make_node("Mul", ["frac", "pi"], ["env_arg"]),
        helper.make_node("Sin", ["env_arg"], ["env"]),
        helper.make_node("Mul", ["tone", "env"], ["shaped"]),
        helper.make_node("Mul", ["shaped", "amplitude"], ["loud"]),
        # silent ids
        helper.make_node("Less", ["id_of_t", "silent_ids"], ["silent"]),
        helper.make_node("Where", ["silent", "zero_f", "loud"], ["audio_flat"]),
        helper.make_node("Reshape", ["audio_flat", "out_shape"], ["output"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    if speakers > 1:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
        nodes += [
            const("speaker_hz", SPEAKER_HZ),
            helper.make_node("Cast", ["sid"], ["sid_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["sid_f", "speaker_hz"], ["sid_hz"]),
            helper.make_node("Add", ["hz_voice", "sid_hz"], ["hz"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["hz_voice"], ["hz"]))
    nodes = _topological(nodes)
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "samples"])]
    return helper.make_graph(nodes, "tiny_piper_voice", inputs, outputs)


def _topological(nodes: list) -> list:
    """Order nodes so each comes after the producers of its inputs (ONNX requires it)."""
    produced = {"input", "input_lengths", "scales", "sid"}
    ordered: list = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise ValueError("the tiny voice graph has a cycle or a missing input")
        for node in ready:
            ordered.append(node)
            produced.update(node.output)
            pending.remove(node)
    return ordered


def voice_config(speakers: int = 1) -> dict:
    """The voice JSON: piper's config shape, piper's own espeak phoneme map."""
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    id_map = {phoneme: list(ids) for phoneme, ids in DEFAULT_PHONEME_ID_MAP.items()}
    config = {
        "audio": {"sample_rate": SAMPLE_RATE, "quality": "x_low"},
        "espeak": {"voice": "en-us"},
        "language": {"code": "en_US"},
        "phoneme_type": "espeak",
        "num_symbols": max(i for ids in id_map.values() for i in ids) + 1,
        "num_speakers": speakers,
        "speaker_id_map": {f"speaker_{i}": i for i in range(speakers)} if speakers > 1 else {},
        "inference": {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8},
        "phoneme_id_map": id_map,
        "dataset": VOICE_NAME,
    }
    return config


def make_tiny_voice(out_dir: Path, *, speakers: int = 1, name: str = VOICE_NAME) -> Path:
    """Write ``<name>.onnx`` and ``<name>.onnx.json`` into ``out_dir``; return ``out_dir``.
    ``speakers > 1``: a multi-speaker voice (``sid`` input, ``speaker_<i>`` names)."""
    import onnx
    from onnx import helper

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(_graph(speakers), opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="studio-tiny-voice")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out / f"{name}.onnx"))
    (out / f"{name}.onnx.json").write_text(json.dumps(voice_config(speakers), ensure_ascii=False, indent=1) + "\n",
                                           encoding="utf-8")
    return out
