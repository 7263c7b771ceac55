"""The one loader every diffusion family goes through, tiny or real weights.

``load_pipeline`` reads a local directory (``local_files_only``) or a hub id
(``HF_HUB_OFFLINE=1`` is honoured by ``huggingface_hub`` itself), loads the
text-to-image pipeline once and derives the image-to-image and inpainting
pipelines from it with ``from_pipe``, so all three share ONE set of weights.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger("deployments.loader")

Kind = Literal["sd", "sdxl"]


@dataclass
class DiffusionPipelines:
    """Three pipelines over one set of modules, plus what callers need to know."""

    text2img: Any
    img2img: Any
    inpaint: Any
    kind: Kind
    default_height: int
    default_width: int
    source: str
    device: str
    dtype: str

    @property
    def vae_scale_factor(self) -> int:
        return int(self.text2img.vae_scale_factor)

    def pipeline(self, task: str) -> Any:
        return {"text2img": self.text2img, "img2img": self.img2img, "inpaint": self.inpaint}[task]


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto`` → float16 on CUDA, float32 elsewhere; else a torch dtype name."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    names = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
    try:
        return names[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(names)}") from None


def _kind_of(pipe) -> Kind:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if isinstance(pipe, StableDiffusionXLPipeline):
        return "sdxl"
    if isinstance(pipe, StableDiffusionPipeline):
        return "sd"
    raise ValueError(
        f"unsupported pipeline class {type(pipe).__name__}; "
        "this family serves Stable Diffusion 1.x/2.x and SDXL pipelines"
    )


def _clip_text_model_alias(pipe) -> None:
    """Compat shim: diffusers 0.42 SD pipelines apply ``clip_skip`` through
    ``text_encoder.text_model.final_layer_norm``, but transformers 5 flattened
    ``CLIPTextModel`` (no ``text_model`` child). Alias it to the model itself as a
    plain attribute (not a registered submodule: no recursion, no state-dict keys).
    """
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is not None and not hasattr(encoder, "text_model") and hasattr(encoder, "final_layer_norm"):
            object.__setattr__(encoder, "text_model", encoder)


def load_pipeline(
    source: str,
    *,
    revision: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
) -> DiffusionPipelines:
    """Load ``source`` (local directory or hub id) as text2img/img2img/inpaint."""
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
    )

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    local = os.path.isdir(source)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if revision is not None:
        kwargs["revision"] = revision
    # A local directory never reaches a hub; HF_HUB_OFFLINE is also honoured by
    # huggingface_hub itself, this just makes the intent explicit.
    if local or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        kwargs["local_files_only"] = True

    t2i = AutoPipelineForText2Image.from_pretrained(source, **kwargs)
    kind = _kind_of(t2i)
    t2i = t2i.to(device)
    _clip_text_model_alias(t2i)
    i2i = AutoPipelineForImage2Image.from_pipe(t2i)
    inp = AutoPipelineForInpainting.from_pipe(t2i)
    for pipe in (t2i, i2i, inp):
        pipe.set_progress_bar_config(disable=True)
    if not (t2i.unet is i2i.unet is inp.unet and t2i.vae is i2i.vae is inp.vae):
        raise RuntimeError("from_pipe did not share modules between pipelines")

    size = int(t2i.unet.config.sample_size) * int(t2i.vae_scale_factor)
    return DiffusionPipelines(
        text2img=t2i,
        img2img=i2i,
        inpaint=inp,
        kind=kind,
        default_height=size,
        default_width=size,
        source=source,
        device=device,
        dtype=str(torch_dtype).removeprefix("torch."),
    )
