"""Tiny random-weight diffusion pipelines, built from configs with no model hub.

    python -m deployments.tiny OUT_DIR [--force]

writes ``OUT_DIR/tiny-sd15`` (a ``StableDiffusionPipeline``) and
``OUT_DIR/tiny-sdxl`` (a ``StableDiffusionXLPipeline``) with ``save_pretrained``.
They use the same classes and config shapes as the real models, only a few
channels wide, and load through the same loader real weights use
(``deployments.loader.load_pipeline``).

**These are random weights. They produce noise, not pictures.** They exist for
the test suite and for the embedded default run, so every request there travels
the real code path (tokenizer → text encoders → UNet → scheduler → VAE) in well
under a second on a CPU. Never present their output as anything but noise.

The CLIP tokenizer files (``vocab.json``, ``merges.txt``) are written by code:
the byte-level alphabet (so any unicode prompt tokenizes), a handful of merges,
and the ``<|startoftext|>`` / ``<|endoftext|>`` specials; max length 77.
Everything is deterministic: ``torch.manual_seed`` runs before each model init.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

MODEL_NAMES = ("tiny-sd15", "tiny-sdxl")  # the bases; every tiny model is in MAKERS

_SEED = 0
_MAX_LENGTH = 77
# A few words to derive BPE merges from; any text still tokenizes (byte fallback).
_MERGE_WORDS = (
    "a photo of the cat dog on in and with red blue green portrait landscape "
    "painting studio light high quality detailed"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer_files(directory: Path) -> tuple[Path, Path]:
    """Write a tiny CLIP BPE ``vocab.json`` + ``merges.txt``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    for symbol in alphabet:
        vocab[symbol + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _MERGE_WORDS:
        if len(word) < 2:
            continue
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            merged = parts[0] + parts[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in vocab:
                vocab[merged] = len(vocab)
            parts = [merged] + parts[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab_path = directory / "vocab.json"
    merges_path = directory / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return vocab_path, merges_path


def make_tokenizer():
    """A ``CLIPTokenizer`` built from generated files (no download)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        # from_pretrained on a local directory reads vocab.json + merges.txt the
        # same way across transformers 4.x and 5.x (5.x's constructor wants dicts).
        tokenizer = CLIPTokenizer.from_pretrained(
            tmp, model_max_length=_MAX_LENGTH, local_files_only=True
        )
    return tokenizer


def _text_config(tokenizer, *, projection_dim: int = 32, layers: int = 4):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=_MAX_LENGTH,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    # Four blocks → three downsamplings → vae_scale_factor 8, as in real SD/SDXL.
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        # fp32 weights already; skips the VAE re-cast (and its warning) in SDXL pipelines
        force_upcast=False,
    )


def build_sd15(sample_size: int = 8):
    """A random-weight ``StableDiffusionPipeline`` (default size sample_size*8)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    torch.manual_seed(_SEED)
    vae = _tiny_vae()
    tokenizer = make_tokenizer()
    torch.manual_seed(_SEED)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    # SD 1.5's own scheduler config.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl(sample_size: int = 16):
    """A random-weight ``StableDiffusionXLPipeline`` (default size sample_size*8)."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = make_tokenizer()
    tokenizer_2 = make_tokenizer()
    projection_dim = 32
    addition_time_embed_dim = 8
    torch.manual_seed(_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        transformer_layers_per_block=(1, 1),
        # six micro-conditioning ids (orig size, crop, target size) + pooled text
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + projection_dim,
        cross_attention_dim=64,  # text_encoder (32) + text_encoder_2 (32) hidden sizes
        norm_num_groups=4,
    )
    torch.manual_seed(_SEED)
    vae = _tiny_vae()
    torch.manual_seed(_SEED)
    text_encoder = CLIPTextModel(_text_config(tokenizer, projection_dim=projection_dim))
    torch.manual_seed(_SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer_2, projection_dim=projection_dim)
    )
    # SDXL base's own scheduler config.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def _pipeline(build):
    def write(target: Path) -> None:
        build().save_pretrained(target, safe_serialization=True)

    return write


def _controlnet_sdxl(target: Path) -> None:
    from deployments.pipelines.tiny_conditioned import write_tiny_controlnet_sdxl

    write_tiny_controlnet_sdxl(target)


def _controlnet_sd15(target: Path) -> None:
    from deployments.pipelines.tiny_conditioned import write_tiny_controlnet_sd15

    write_tiny_controlnet_sd15(target)


def _ip_adapter(base: Literal["sd15", "sdxl"]):
    def write(target: Path) -> None:
        from deployments.pipelines.tiny_conditioned import write_tiny_ip_adapter

        write_tiny_ip_adapter(target, base=base)

    return write


def _loras(base: Literal["sd15", "sdxl"]):
    def write(target: Path) -> None:
        from deployments.pipelines.tiny_options import write_tiny_loras

        write_tiny_loras(target, base=base)

    return write


def _vaes(target: Path) -> None:
    from deployments.pipelines.tiny_options import write_tiny_vae

    write_tiny_vae(target)


def _depth(target: Path) -> None:
    from deployments.pipelines.tiny_preprocessors import write_tiny_depth

    write_tiny_depth(target.parent)


def _pose(target: Path) -> None:
    from deployments.pipelines.tiny_preprocessors import write_tiny_pose

    write_tiny_pose(target.parent)


def _safety(target: Path) -> None:
    from deployments.pipelines.tiny_safety import write_tiny_safety_checker

    write_tiny_safety_checker(target.parent, force=True)


def _face_pack(target: Path) -> None:
    from deployments.pipelines.tiny_faces import write_tiny_face_pack

    write_tiny_face_pack(target)


def _faceid_sdxl(target: Path) -> None:
    from deployments.pipelines.tiny_faces import write_tiny_faceid_adapter

    write_tiny_faceid_adapter(target)


def _saliency(target: Path) -> None:
    from deployments.pipelines.tiny_saliency import write_tiny_saliency

    write_tiny_saliency(target)


def _esrgan(target: Path) -> None:
    from deployments.pipelines.tiny_upscalers import write_tiny_esrgan

    write_tiny_esrgan(target)


def _sd_x4(target: Path) -> None:
    from deployments.pipelines.tiny_upscalers import write_tiny_sd_x4

    write_tiny_sd_x4(target)


def _minilm(target: Path) -> None:
    from deployments.pipelines.tiny_embedder import make_tiny_embedder

    make_tiny_embedder(target)


def _chat_llm(target: Path) -> None:
    from deployments.pipelines.tiny_llm import make_tiny_llm

    make_tiny_llm(target)


def _piper_voice(target: Path) -> None:
    from deployments.pipelines.tiny_voice import make_tiny_voice

    make_tiny_voice(target)


#: Every tiny model by directory name: what ``deployments.catalog.KINDS[*].tiny_models`` lists.
MAKERS = {
    "tiny-sd15": _pipeline(build_sd15),
    "tiny-sdxl": _pipeline(build_sdxl),
    "tiny-controlnet-sdxl-canny": _controlnet_sdxl,
    "tiny-controlnet-sdxl-depth": _controlnet_sdxl,
    "tiny-controlnet-sdxl-openpose": _controlnet_sdxl,
    "tiny-controlnet-sd15-qrcode": _controlnet_sd15,
    "tiny-depth": _depth,
    "tiny-pose": _pose,
    "tiny-ip-adapter-sd15": _ip_adapter("sd15"),
    "tiny-ip-adapter-sdxl": _ip_adapter("sdxl"),
    "tiny-loras-sd15": _loras("sd15"),
    "tiny-loras-sdxl": _loras("sdxl"),
    "tiny-vaes": _vaes,
    "tiny-safety-checker": _safety,
    "tiny-face-pack": _face_pack,
    "tiny-faceid-sdxl": _faceid_sdxl,
    "tiny-saliency": _saliency,
    "tiny-esrgan-4x": _esrgan,
    "tiny-sd-x4-upscaler": _sd_x4,
    "tiny-minilm": _minilm,
    "tiny-chat-llm": _chat_llm,
    "tiny-piper-voice": _piper_voice,
}


def tiny_model_names() -> list[str]:
    """The tiny models of every family kind, from the task table."""
    from deployments.catalog import KINDS

    names: list[str] = []
    for kind in KINDS.values():
        names += [n for n in kind.tiny_models if n not in names]
    return names


def make_tiny_models(
    out_dir: str | Path, *, force: bool = False, progress=None
) -> dict[str, Path]:
    """Write every tiny model under ``out_dir``; return ``{name: directory}``.

    A model whose directory already holds its ``.complete`` marker is skipped unless
    ``force``. ``progress`` (default: no output) gets one line per model.
    """
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in tiny_model_names():
        target = out / name
        marker = target / ".complete"
        if marker.is_file() and not force:
            if progress:
                progress(f"{name}: exists at {target}, skipped (use --force to rebuild)")
            written[name] = target
            continue
        start = time.perf_counter()
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        MAKERS[name](target)
        marker.write_text("")
        if progress:
            progress(f"{name}: written to {target} in {time.perf_counter() - start:.2f}s")
        written[name] = target
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.tiny",
        description="Write every tiny random-weight model (they produce noise; "
        "for tests and the embedded default only).",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    args = parser.parse_args(argv)
    make_tiny_models(args.out_dir, force=args.force, progress=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
