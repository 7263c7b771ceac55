"""The Stable Diffusion x4 upscaler (diffusers ``StableDiffusionUpscalePipeline``): load and call.

The pipeline denoises latents at the input's own resolution, conditioned on the input
(noised by ``noise_level`` through its ``low_res_scheduler``) and on the prompt; its VAE
decodes them four times larger. Its image processor rounds the input size DOWN to a multiple
of the VAE scale factor, and the UNet is cleanest on multiples of its own downsampling, so
:meth:`SDUpscaler.upscale` pads the input (edge pixels repeated) to a multiple of both and
crops the result: the output is exactly 4x the input, whatever its size.

Noise comes from a CPU ``torch.Generator`` seeded with the job's seed: the same seed gives
the same output on any device. Progress: diffusers 0.42's upscale pipeline has no
``callback_on_step_end``, so its per-step ``callback`` reports each finished step; an exception
``on_step`` raises there (the family base's ``TaskStopped`` once the job's caller went away)
leaves the denoising loop at once, before the VAE decode.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from typing import Any

from PIL import Image

from deployments.errors import InvalidJobError

SCALE = 4
DEFAULT_NOISE_LEVEL = 20

OnStep = Callable[[int, int], None]


class SDUpscaler:
    """A loaded ``StableDiffusionUpscalePipeline``; one call at a time. No IO."""

    def __init__(self, pipe: Any, *, device: str, dtype: str, source: str = ""):
        if int(pipe.vae_scale_factor) != SCALE:
            raise ValueError(f"not an x4 upscaler: its VAE scales by {pipe.vae_scale_factor}")
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.source = source
        unet_factor = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        self.multiple = math.lcm(int(pipe.vae_scale_factor), unet_factor)
        self._lock = threading.Lock()

    @property
    def max_noise_level(self) -> int:
        return int(self.pipe.config.max_noise_level)

    def upscale(self, image: Image.Image, *, prompt: str, seed: int, negative_prompt: str | None = None,
                num_inference_steps: int = 20, guidance_scale: float = 7.5, noise_level: int = DEFAULT_NOISE_LEVEL,
                on_step: OnStep | None = None) -> Image.Image:
        """``image`` (RGB) four times larger, guided by ``prompt``; deterministic for a ``seed``."""
        import torch

        if num_inference_steps < 1:
            raise InvalidJobError("num_inference_steps", "num_inference_steps must be at least 1")
        if guidance_scale < 0:
            raise InvalidJobError("guidance_scale", "guidance_scale must be at least 0")
        if not 0 <= noise_level <= self.max_noise_level:
            raise InvalidJobError("noise_level", f"allowed: 0..{self.max_noise_level} (got {noise_level})")
        image = image.convert("RGB")
        width, height = image.size
        padded = pad_to_multiple(image, self.multiple)

        def callback(step: int, timestep: Any, latents: Any) -> None:
            if on_step is not None:
                on_step(min(step + 1, num_inference_steps), num_inference_steps)

        with self._lock, torch.inference_mode():
            result = self.pipe(
                prompt=prompt,
                negative_prompt=negative_prompt,
                image=padded,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                noise_level=noise_level,
                generator=torch.Generator("cpu").manual_seed(seed),
                output_type="pil",
                callback=callback,
                callback_steps=1,
            ).images[0]
        expected = (padded.width * SCALE, padded.height * SCALE)
        if result.size != expected:
            raise RuntimeError(f"the pipeline made {result.size}, expected {expected}")
        return result.crop((0, 0, width * SCALE, height * SCALE))


def pad_to_multiple(image: Image.Image, multiple: int) -> Image.Image:
    """``image`` grown right and down to sides that are multiples of ``multiple``, edge pixels repeated."""
    import numpy as np

    width, height = image.size
    pad_w, pad_h = -width % multiple, -height % multiple
    if not (pad_w or pad_h):
        return image
    array = np.pad(np.asarray(image), ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return Image.fromarray(array, image.mode)


def load_sd_upscaler(source: str, *, revision: str | None = None, dtype: str = "auto",
                     device: str = "auto") -> SDUpscaler:
    """Load ``source`` (a ``save_pretrained`` directory; a hub id only from the local cache when offline)."""
    from diffusers import StableDiffusionUpscalePipeline

    from deployments.loader import resolve_device, resolve_dtype

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if revision is not None:
        kwargs["revision"] = revision
    if os.path.isdir(source) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        kwargs["local_files_only"] = True
    pipe = StableDiffusionUpscalePipeline.from_pretrained(source, **kwargs)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return SDUpscaler(pipe, device=device, dtype=str(torch_dtype).removeprefix("torch."), source=source)
