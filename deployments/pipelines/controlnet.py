"""ControlNet pipelines over a loaded SD 1.5 / SDXL base, sharing its weights.

``controlnet_pipeline(base, controlnet)`` builds a ``StableDiffusion(XL)ControlNetPipeline``
with ``from_pipe``: the UNet, VAE, text encoders, tokenizers and scheduler are the
base's own objects, so each extra ControlNet (canny, depth, openpose, …) costs only
its own weights. The ControlNet is never attached to the base UNet; other
pipelines over the same modules are unaffected.

Illusion Diffusion is this with an SD 1.5 base and a QR-code-monster ControlNet
(``monster-labs/control_v1p_sd15_qrcode_monster``): the pattern image is the
control image; see :func:`illusion_conditioning_scale` for how ``strength`` maps.
"""

from __future__ import annotations

from typing import Any

from deployments.errors import InvalidJobError

# Illusion Diffusion defaults (after the AP123/IllusionDiffusion Space).
ILLUSION_DEFAULT_PROMPT = (
    "medieval village scene with busy streets and a castle in the distance, "
    "best quality, highly detailed"
)
ILLUSION_DEFAULT_NEGATIVE_PROMPT = "low quality"
ILLUSION_SCALE_MIN = 0.8
ILLUSION_SCALE_MAX = 2.0
# The ControlNet acts over the whole denoising (the Space's defaults); ending it
# earlier softens the pattern but also lets it fade, which `strength` already covers.
ILLUSION_GUIDANCE_START = 0.0
ILLUSION_GUIDANCE_END = 1.0


def load_controlnet(path: str, dtype, device: str):
    """``ControlNetModel.from_pretrained`` of local directory ``path``, on ``device`` in ``dtype``."""
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(path, dtype=dtype, local_files_only=True).to(device)


def controlnet_pipeline(base, controlnet):
    """A ControlNet text2img pipeline sharing every module of text2img pipeline ``base``.

    Raises ``ValueError`` if ``controlnet`` was not made for ``base``'s UNet.
    """
    from diffusers import AutoPipelineForText2Image

    unet_config, cn_config = base.unet.config, controlnet.config
    for key in ("cross_attention_dim", "addition_embed_type", "in_channels"):
        if unet_config.get(key) != cn_config.get(key):
            raise ValueError(
                f"ControlNet does not fit this base: {key} is {cn_config.get(key)!r}, "
                f"the base UNet has {unet_config.get(key)!r}"
            )
    pipe = AutoPipelineForText2Image.from_pipe(base, controlnet=controlnet)
    shared = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "scheduler")
    for name in shared:
        if getattr(pipe, name, None) is not getattr(base, name, None):
            raise RuntimeError(f"from_pipe did not share {name} with the base pipeline")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unit(field: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise InvalidJobError(field, f"must be between 0 and 1, got {value}")
    return float(value)


def control_image_size(image, multiple: int = 8, field: str = "image") -> tuple[int, int]:
    """``(height, width)`` of a PIL control image; both must be multiples of ``multiple``
    (the VAE scale factor) because the output has the control image's size."""
    width, height = image.size
    if width % multiple or height % multiple:
        raise InvalidJobError(
            field, f"width and height must be multiples of {multiple}, got {width}x{height}"
        )
    return height, width


def controlnet_call_kwargs(
    image, strength: float, *, multiple: int = 8, field: str = "image"
) -> dict[str, Any]:
    """Pipeline kwargs for one ControlNet call: ``strength`` (0..1) is
    ``controlnet_conditioning_scale``; the output size is the control image's."""
    height, width = control_image_size(image, multiple, field)
    return {
        "image": image.convert("RGB"),
        "controlnet_conditioning_scale": _unit("strength", strength),
        "height": height,
        "width": width,
    }


def illusion_conditioning_scale(strength: float) -> float:
    """Map public ``strength`` 0..1 linearly onto QR-code-monster's useful range:
    ``scale = 0.8 + 1.2 * strength`` (0 → 0.8, 0.5 → 1.4, 1 → 2.0).

    Below ~0.8 the pattern mostly vanishes (plain text2img, useless for this task);
    0.8 is the IllusionDiffusion Space's default, a subtle illusion; around 1.3–1.5
    the pattern reads clearly; towards 2.0 it dominates the picture. Spending the
    whole slider on that range makes every ``strength`` produce an illusion.
    """
    s = _unit("strength", strength)
    return ILLUSION_SCALE_MIN + (ILLUSION_SCALE_MAX - ILLUSION_SCALE_MIN) * s


def illusion_call_kwargs(
    pattern, strength: float, prompt: str | None = None, *, multiple: int = 8, field: str = "image"
) -> dict[str, Any]:
    """Pipeline kwargs for Illusion Diffusion: ``pattern`` is the control image,
    ``prompt`` falls back to :data:`ILLUSION_DEFAULT_PROMPT`."""
    height, width = control_image_size(pattern, multiple, field)
    return {
        "prompt": prompt or ILLUSION_DEFAULT_PROMPT,
        "negative_prompt": ILLUSION_DEFAULT_NEGATIVE_PROMPT,
        "image": pattern.convert("RGB"),
        "controlnet_conditioning_scale": illusion_conditioning_scale(strength),
        "control_guidance_start": ILLUSION_GUIDANCE_START,
        "control_guidance_end": ILLUSION_GUIDANCE_END,
        "height": height,
        "width": width,
    }
