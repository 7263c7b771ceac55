"""Tiny random-weight ControlNets and IP-Adapters that plug into ``deployments.tiny``.

**Random weights: they produce noise.** They exist so tests travel the real
loading and conditioning code paths (``ControlNetModel.from_pretrained``,
diffusers' ``load_ip_adapter``) with no model hub.

On-disk layouts (the same as the real repositories):

* ControlNet: ``save_pretrained`` → ``<out>/config.json`` +
  ``<out>/diffusion_pytorch_model.safetensors`` (as ``diffusers/controlnet-*``).
* IP-Adapter (as ``h94/IP-Adapter``)::

      <out>/models/ip-adapter_sd15.safetensors          (base="sd15")
      <out>/models/image_encoder/{config.json,model.safetensors}
      <out>/sdxl_models/ip-adapter_sdxl.safetensors     (base="sdxl")
      <out>/sdxl_models/image_encoder/{config.json,model.safetensors}

  The weight file holds ``image_proj.proj.{weight,bias}``,
  ``image_proj.norm.{weight,bias}`` and ``ip_adapter.<n>.to_{k,v}_ip.weight``,
  where ``<n>`` is the cross-attention processor's index in
  ``unet.attn_processors`` order (self- and cross-attention alternate, so
  ``n`` = 1, 3, 5, …; the original package loads them as a ``ModuleList`` over
  all processors and diffusers' ``_convert_ip_adapter_attn_to_diffusers``
  counts ``key_id`` from 1 in steps of 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Base = Literal["sd15", "sdxl"]

_SEED = 0
# Four stages → three stride-2 convs → the control image is downsampled by 8,
# the VAE's scale factor (real ControlNets use (16, 32, 96, 256)).
_COND_CHANNELS = (8, 8, 16, 16)
_IMAGE_EMBED_DIM = 32  # CLIP vision projection_dim (1024 for ViT-H, 1280 for ViT-bigG)
_NUM_TOKENS = 4  # IP-Adapter (non-plus) image tokens

_KINDS = {"sd15": "sd", "sdxl": "sdxl"}  # tiny base name → pipeline kind


def _base_unet(base: Base):
    from deployments.tiny import build_sd15, build_sdxl

    builders = {"sd15": build_sd15, "sdxl": build_sdxl}
    if base not in builders:
        raise ValueError(f"base must be 'sd15' or 'sdxl', not {base!r}")
    return builders[base]().unet


def build_tiny_controlnet(base: Base):
    """A ``ControlNetModel`` whose config (and copied weights) match tiny ``base``'s UNet.

    ``from_unet`` leaves the zero-convolutions (``controlnet_down_blocks``,
    ``controlnet_mid_block``, the conditioning embedding's ``conv_out``) at zero,
    which would make the ControlNet a no-op, and default-initialised conv stacks
    shrink the control image's signal to nothing. So the conditioning embedding
    gets seeded He-normal weights and the zero-convolutions small seeded random
    ones: both the conditioning scale and the control image visibly change the output.
    """
    import torch
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(
        _base_unet(base), conditioning_embedding_out_channels=_COND_CHANNELS
    )
    generator = torch.Generator().manual_seed(_SEED)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in controlnet.controlnet_cond_embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.1)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
    return controlnet


def _write_controlnet(base: Base, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    build_tiny_controlnet(base).save_pretrained(out, safe_serialization=True)
    return out


def write_tiny_controlnet_sd15(out_dir: str | Path) -> Path:
    """Write a ControlNet for ``tiny-sd15`` (e.g. the Illusion/QR-monster role); return ``out_dir``."""
    return _write_controlnet("sd15", out_dir)


def write_tiny_controlnet_sdxl(out_dir: str | Path) -> Path:
    """Write a ControlNet for ``tiny-sdxl`` (canny/depth/openpose roles); return ``out_dir``."""
    return _write_controlnet("sdxl", out_dir)


def _tiny_image_encoder():
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        projection_dim=_IMAGE_EMBED_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_act="gelu",
    )
    torch.manual_seed(_SEED)
    return CLIPVisionModelWithProjection(config)


def ip_adapter_state_dict(unet, image_embed_dim: int = _IMAGE_EMBED_DIM) -> dict:
    """Seeded IP-Adapter tensors for ``unet`` in h94's flat key layout."""
    import torch

    generator = torch.Generator().manual_seed(_SEED)

    def rand(*shape):
        return torch.randn(shape, generator=generator) * 0.1

    cross_dim = int(unet.config.cross_attention_dim)
    tensors = {
        "image_proj.proj.weight": rand(_NUM_TOKENS * cross_dim, image_embed_dim),
        "image_proj.proj.bias": rand(_NUM_TOKENS * cross_dim),
        "image_proj.norm.weight": torch.ones(cross_dim),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }
    channels = list(unet.config.block_out_channels)
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = channels[::-1][int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        tensors[f"ip_adapter.{index}.to_k_ip.weight"] = rand(hidden, cross_dim)
        tensors[f"ip_adapter.{index}.to_v_ip.weight"] = rand(hidden, cross_dim)
    return tensors


def write_tiny_ip_adapter(out_dir: str | Path, base: Base = "sd15") -> Path:
    """Write an h94/IP-Adapter-style directory for tiny ``base``; return ``out_dir``."""
    from safetensors.torch import save_file

    from deployments.pipelines.ip_adapter import IP_ADAPTER_FILES

    unet = _base_unet(base)  # raises on an unknown base
    subfolder, weight_name = IP_ADAPTER_FILES[_KINDS[base]]
    out = Path(out_dir)
    folder = out / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    tensors = ip_adapter_state_dict(unet)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / weight_name))
    _tiny_image_encoder().save_pretrained(folder / "image_encoder", safe_serialization=True)
    return out
