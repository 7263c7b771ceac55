"""Tiny random-weight upscalers: an ESRGAN (RRDBNet) weights file and a Stable Diffusion x4
upscaler pipeline, built from code with no model hub.

**Random weights: they produce noise-like textures, not enlargements.** They exist so tests
and the embedded default travel the real loading and inference code paths (spandrel's
architecture detection, tiling; ``StableDiffusionUpscalePipeline.from_pretrained``) in well
under a second per call on a CPU for a 64x64 input. Everything is seeded (deterministic).

On-disk layouts (the same as real weights):

* ESRGAN: ``<target>/4x-tiny-esrgan.safetensors``, one flat state dict in the ORIGINAL
  ESRGAN key layout that 4x-UltraSharp and most community ESRGAN models use
  (``model.0`` first conv, ``model.1.sub.<b>.RDB<r>.conv<c>.0`` dense blocks,
  ``model.1.sub.<nb>`` trunk conv, ``model.3``/``model.6`` upsampling convs, ``model.8``
  HR conv, ``model.10`` last conv for 4x). 8 features wide (``nf``), growth 32 (spandrel's
  RRDBNet fixes ``gc`` at 32), one RRDB block; spandrel detects it as ``ESRGAN`` with scale 4
  from the keys alone. :func:`write_tiny_esrgan_file` writes any native scale (2 or 4) for tests.
* SD x4: ``save_pretrained`` of a ``StableDiffusionUpscalePipeline`` (``model_index.json``,
  ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``low_res_scheduler/``):
  a UNet with ``in_channels`` 7 (4 latent + 3 image) and 4 out, class-embedded noise level
  (1000 classes, as the real one), a three-block VAE (``vae_scale_factor`` 4, ``scaling_factor``
  0.08333), a 32-wide CLIP text encoder with the generated tokenizer of ``deployments.tiny``, a
  v-prediction DDIM scheduler and a DDPM ``low_res_scheduler`` (the real model's configs),
  ``max_noise_level`` 350.
"""

from __future__ import annotations

import math
from pathlib import Path

ESRGAN_FILE = "4x-tiny-esrgan.safetensors"

_SEED = 0
_GROWTH = 32  # spandrel's RRDBNet (old arch) has gc=32 built in


def esrgan_state_dict(scale: int = 4, *, features: int = 8, blocks: int = 1, seed: int = _SEED) -> dict:
    """Seeded RRDBNet tensors in the original ESRGAN key layout (``model.N...``) for a 2x or 4x model.

    Convs get He-normal weights scaled down (0.1 in the dense blocks, as ESRGAN initialises
    them) and zero biases, except the last conv's bias (0.5: mid-grey) so outputs are neither
    black nor saturated (the last conv also at 0.1 gain: few pixels clip).
    """
    import torch

    if scale not in (2, 4):
        raise ValueError(f"scale must be 2 or 4, not {scale}")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def conv(key: str, out_ch: int, in_ch: int, gain: float = 1.0, bias: float = 0.0) -> None:
        std = gain * math.sqrt(2.0 / (in_ch * 9))
        tensors[f"{key}.weight"] = torch.randn((out_ch, in_ch, 3, 3), generator=generator) * std
        tensors[f"{key}.bias"] = torch.full((out_ch,), bias)

    conv("model.0", features, 3)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for index in range(1, 5):
                conv(f"model.1.sub.{block}.RDB{rdb}.conv{index}.0", _GROWTH, features + (index - 1) * _GROWTH, 0.1)
            conv(f"model.1.sub.{block}.RDB{rdb}.conv5.0", features, features + 4 * _GROWTH, 0.1)
    conv(f"model.1.sub.{blocks}", features, features)
    # [Upsample, Conv, LeakyReLU] per doubling: convs at model.3, model.6, ...
    doublings = int(math.log2(scale))
    for step in range(doublings):
        conv(f"model.{3 + 3 * step}", features, features)
    hr = 3 * doublings + 2
    conv(f"model.{hr}", features, features)
    conv(f"model.{hr + 2}", 3, features, gain=0.1, bias=0.5)
    return tensors


def write_tiny_esrgan_file(path: str | Path, scale: int = 4) -> Path:
    """Write a tiny ESRGAN of native ``scale`` (2 or 4) to ``path`` (``.safetensors`` or ``.pth``)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in esrgan_state_dict(scale).items()}
    if path.suffix == ".pth":
        torch.save(tensors, path)
    else:
        save_file(tensors, str(path))
    return path


def write_tiny_esrgan(target: Path) -> Path:
    """Write ``<target>/4x-tiny-esrgan.safetensors``; return its path."""
    return write_tiny_esrgan_file(Path(target) / ESRGAN_FILE, scale=4)


def build_tiny_sd_x4():
    """A random-weight ``StableDiffusionUpscalePipeline`` (x4) a few channels wide."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from deployments.tiny import _text_config, make_tokenizer

    torch.manual_seed(_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=7,  # 4 latent channels + the 3-channel noised low-res image
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
        num_class_embeds=1000,  # the noise level is a class label, as in the real model
    )
    torch.manual_seed(_SEED)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16),  # three blocks → two downsamplings → vae_scale_factor 4
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.08333,
        force_upcast=False,
    )
    tokenizer = make_tokenizer()
    torch.manual_seed(_SEED)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    # stabilityai/stable-diffusion-x4-upscaler's scheduler and low_res_scheduler configs.
    scheduler = DDIMScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
    )
    low_res_scheduler = DDPMScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=True, prediction_type="epsilon", variance_type="fixed_small",
    )
    return StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=low_res_scheduler,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        max_noise_level=350,
    )


def write_tiny_sd_x4(target: Path) -> Path:
    """``save_pretrained`` a tiny SD x4 upscaler pipeline into ``target``; return it."""
    target = Path(target)
    build_tiny_sd_x4().save_pretrained(target, safe_serialization=True)
    return target
