"""Tiny random-weight LoRAs and VAEs for the tiny pipelines in :mod:`deployments.tiny`.

``write_tiny_loras(out_dir, base)`` writes ``out_dir/<name>.safetensors`` for
each name: a rank-4 LoRA on the UNet attention projections (``to_q/to_k/to_v/
to_out.0``) of ``build_sd15()`` / ``build_sdxl()``; the names in
``with_text_encoder`` also carry LoRA on every text encoder (``q/k/v/out_proj``).
Files are written with the pipeline class's own ``save_lora_weights`` (diffusers
key format plus the peft ``LoraConfig`` as metadata), so ``load_lora_weights``
reads them the way it reads real LoRA files.

``write_tiny_vae(out_dir, name)`` writes ``out_dir/<name>/`` (``config.json`` +
``diffusion_pytorch_model.safetensors``): an ``AutoencoderKL`` shaped like the
tiny pipelines' VAE but with other random weights.

**Random weights: they change the noise, they do not add a style.** Deterministic:
every name has its own seed (CRC32 of the name); the caller's RNG state is kept.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

LORA_NAMES = ("tiny-ink", "tiny-sketch", "tiny-clay")
VAE_NAME = "tiny-vae-alt"
_RANK = 4
_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _seed(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _lora_layers(model, config, adapter: str):
    """Add a random (non-zero A and B) adapter to ``model``; return its state dict + metadata."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    model.add_adapter(config, adapter_name=adapter)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(model, adapter_name=adapter))
    return layers, model.peft_config[adapter].to_dict()


def write_tiny_loras(
    out_dir: str | Path,
    base: str = "sd15",
    names: Sequence[str] = LORA_NAMES,
    *,
    with_text_encoder: Collection[str] = ("tiny-clay",),
) -> Path:
    """Write one tiny LoRA per name for the tiny ``base`` ("sd15" or "sdxl"); return ``out_dir``."""
    from peft import LoraConfig

    from deployments.tiny import build_sd15, build_sdxl

    builders = {"sd15": build_sd15, "sdxl": build_sdxl}
    if base not in builders:
        raise ValueError(f"unknown base {base!r}; use one of {sorted(builders)}")
    unknown = set(with_text_encoder) - set(names)
    if unknown:
        raise ValueError(f"with_text_encoder names not in names: {sorted(unknown)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        pipe = builders[base]()
        encoders = ["text_encoder"] + (["text_encoder_2"] if base == "sdxl" else [])
        for index, name in enumerate(names):
            adapter = f"tiny{index}"  # one adapter per name on the throwaway pipeline
            torch.manual_seed(_seed(name))
            kwargs = {}
            config = LoraConfig(r=_RANK, lora_alpha=_RANK, init_lora_weights=False,
                                target_modules=_UNET_TARGETS)
            kwargs["unet_lora_layers"], kwargs["unet_lora_adapter_metadata"] = _lora_layers(
                pipe.unet, config, adapter)
            if name in with_text_encoder:
                for encoder in encoders:
                    config = LoraConfig(r=_RANK, lora_alpha=_RANK, init_lora_weights=False,
                                        target_modules=_TEXT_TARGETS)
                    kwargs[f"{encoder}_lora_layers"], kwargs[f"{encoder}_lora_adapter_metadata"] = (
                        _lora_layers(getattr(pipe, encoder), config, adapter))
            type(pipe).save_lora_weights(out, weight_name=f"{name}.safetensors", **kwargs)
    return out


def write_tiny_vae(out_dir: str | Path, name: str = VAE_NAME) -> Path:
    """Write an alternative tiny VAE to ``out_dir/<name>``; return that directory."""
    from deployments.tiny import _tiny_vae

    target = Path(out_dir) / name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(name))
        vae = _tiny_vae()
    vae.save_pretrained(target, safe_serialization=True)
    return target
