from __future__ import annotations

import json
import time

import pytest

from deployments.catalog import KINDS
from deployments.loader import load_pipeline
from deployments.tiny import MAKERS, MODEL_NAMES, make_tiny_models, make_tokenizer


def test_every_model_of_the_task_table_is_written(tiny_models):
    wanted = {name for kind in KINDS.values() for name in kind.tiny_models}
    assert set(tiny_models) == wanted == set(MAKERS) and set(MODEL_NAMES) <= wanted
    for path in tiny_models.values():
        assert (path / ".complete").is_file() and any(p.name != ".complete" for p in path.iterdir())
    for name in MODEL_NAMES:
        assert (tiny_models[name] / "model_index.json").is_file()
    sd_index = json.loads((tiny_models["tiny-sd15"] / "model_index.json").read_text())
    xl_index = json.loads((tiny_models["tiny-sdxl"] / "model_index.json").read_text())
    assert sd_index["_class_name"] == "StableDiffusionPipeline"
    assert sd_index["safety_checker"] == [None, None]
    assert xl_index["_class_name"] == "StableDiffusionXLPipeline"
    assert "text_encoder_2" in xl_index and "tokenizer_2" in xl_index


@pytest.mark.parametrize("name,kind", [("tiny-sd15", "sd"), ("tiny-sdxl", "sdxl")])
def test_loads_through_the_loader(tiny_models, name, kind):
    pipes = load_pipeline(str(tiny_models[name]))
    assert pipes.kind == kind
    assert pipes.vae_scale_factor == 8
    assert pipes.text2img.vae_scale_factor == 8
    assert pipes.default_height == pipes.text2img.unet.config.sample_size * 8
    assert pipes.device == "cpu" and pipes.dtype == "float32"


def test_sdxl_unet_uses_text_time_conditioning(sdxl_pipelines):
    config = sdxl_pipelines.text2img.unet.config
    assert config.addition_embed_type == "text_time"
    assert type(sdxl_pipelines.text2img.text_encoder_2).__name__ == "CLIPTextModelWithProjection"


def test_second_call_is_idempotent_and_fast(tiny_models):
    out_dir = tiny_models["tiny-sd15"].parent
    before = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()}
    start = time.perf_counter()
    again = make_tiny_models(out_dir)
    assert time.perf_counter() - start < 1.0
    assert again == tiny_models
    after = {p: p.stat().st_mtime_ns for p in out_dir.rglob("*") if p.is_file()}
    assert after == before


def test_force_rebuilds_deterministically(tmp_path, tiny_models):
    from safetensors.torch import load_file

    rebuilt = make_tiny_models(tmp_path, force=True)
    for rel in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a = load_file(tiny_models["tiny-sd15"] / rel)
        b = load_file(rebuilt["tiny-sd15"] / rel)
        assert a.keys() == b.keys()
        assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize(
    "prompt",
    ["a photo of the cat", "日本の猫 🐱 Ünïcödé", "\u200b\x00\t\n", "", "x" * 500],
)
def test_tokenizer_handles_any_unicode(prompt):
    tok = make_tokenizer()
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert tok.model_max_length == 77
    assert len(ids) == 77
    assert ids[0] == tok.bos_token_id
    assert tok.eos_token_id in ids
    assert all(0 <= i < len(tok) for i in ids)
    body = ids[1 : ids.index(tok.eos_token_id)]
    if prompt.strip("\u200b\x00\t\n "):
        assert body  # real text becomes real tokens, not dropped
    # byte-level: nothing falls back to the unknown token
    assert tok.unk_token_id not in body


def test_saved_tokenizer_round_trips(sd_pipelines):
    tok = sd_pipelines.text2img.tokenizer
    assert tok.model_max_length == 77
    assert len(tok) == sd_pipelines.text2img.text_encoder.config.vocab_size
    assert tok.decode(tok("a photo of a cat").input_ids, skip_special_tokens=True).strip() == "a photo of a cat"
