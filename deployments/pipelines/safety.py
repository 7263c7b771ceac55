"""CompVis-style safety checker: flag images, then treat the flagged ones.

The model is diffusers' ``StableDiffusionSafetyChecker`` (a CLIP vision tower
plus 17 concept and 3 "special care" embeddings with per-concept thresholds) and
its ``CLIPImageProcessor``, both read from ONE local directory, the layout of
``CompVis/stable-diffusion-safety-checker``: ``config.json``, the weights and
``preprocessor_config.json``. The image processor is transformers 5's PIL
backend (``CLIPImageProcessorPil``), the classic CLIP preprocessing, whether or
not torchvision is installed.

Flags come from the checker's own ``forward_onnx`` (the same scores as
``forward`` without its 3-decimal rounding and its "black image returned"
warning). The checker blacks out the images it is given; it is only given a
dummy tensor, so :meth:`SafetyChecker.treat` always works on the ORIGINAL image.

``adjustment`` is the knob diffusers hard-codes to 0 in ``forward`` ("increase
this value to create a stronger nsfw filter"): it is added to every score, which
``load`` implements by lowering every threshold by it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from deployments.errors import InvalidJobError

SafetyTreatment = Literal["blur", "pixelate", "black", "sensitive_content_text"]
TREATMENTS: tuple[str, ...] = get_args(SafetyTreatment)
TEXT = "Sensitive content"
PIXEL_BLOCKS = 16  # pixelate keeps ~1/16 of each side


def _blur(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=max(4, max(image.size) // 8)))


def _pixelate(image: Image.Image) -> Image.Image:
    w, h = image.size
    small = image.resize((max(1, w // PIXEL_BLOCKS), max(1, h // PIXEL_BLOCKS)), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


def _black(image: Image.Image) -> Image.Image:
    return Image.new("RGB", image.size, (0, 0, 0))


def _sensitive_content_text(image: Image.Image) -> Image.Image:
    out = _black(image)
    draw = ImageDraw.Draw(out)
    # PIL's default font; scalable when Pillow has FreeType. Sized to ~80% of the width.
    left, _, right, _ = draw.textbbox((0, 0), TEXT, font=ImageFont.load_default(size=100))
    font = ImageFont.load_default(size=max(1, int(100 * 0.8 * out.width / max(1, right - left))))
    left, top, right, bottom = draw.textbbox((0, 0), TEXT, font=font)
    x = (out.width - (right - left)) / 2 - left
    y = (out.height - (bottom - top)) / 2 - top
    draw.text((x, y), TEXT, fill=(255, 255, 255), font=font)
    return out


_TREAT = {
    "blur": _blur,
    "pixelate": _pixelate,
    "black": _black,
    "sensitive_content_text": _sensitive_content_text,
}


class SafetyChecker:
    """A loaded checker: :meth:`check` flags, :meth:`treat` hides, :meth:`screen` does both."""

    def __init__(self, model: Any, processor: Any, *, adjustment: float = 0.0):
        self.model = model
        self.processor = processor
        self.adjustment = adjustment

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: Any = None, *, adjustment: float = 0.0):
        """Read checker + image processor from the local directory ``path``."""
        import torch
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessorPil

        dtype = dtype or torch.float32
        model = StableDiffusionSafetyChecker.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        # transformers declares ``to`` through functools.wraps, which mypy reads as unbound (self = device).
        model = model.to(device).eval()  # type: ignore[arg-type]
        if adjustment:
            with torch.no_grad():
                model.concept_embeds_weights -= adjustment
                model.special_care_embeds_weights -= adjustment
        processor = CLIPImageProcessorPil.from_pretrained(str(path), local_files_only=True)
        return cls(model, processor, adjustment=adjustment)

    def check(self, images: list[Image.Image]) -> list[bool]:
        """One flag per image: True means the checker found a concept above threshold."""
        import torch

        if not images:
            return []
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        clip_input = inputs.pixel_values.to(self.model.device, self.model.dtype)
        dummy = torch.zeros(len(images), 1)  # forward_onnx blacks out flagged entries of this
        _, flagged = self.model.forward_onnx(clip_input, dummy)
        return [bool(f) for f in flagged.tolist()]

    @staticmethod
    def treat(image: Image.Image, kind: str) -> Image.Image:
        """A new RGB image of the same size with ``image`` hidden by ``kind``."""
        if kind not in _TREAT:
            raise InvalidJobError("safety_checker_type", f"unknown treatment {kind!r}; use one of {', '.join(TREATMENTS)}")
        return _TREAT[kind](image.convert("RGB"))

    def screen(self, images: list[Image.Image], kind: str) -> tuple[list[Image.Image], list[bool]]:
        """``check`` then ``treat`` the flagged images; unflagged ones are returned as given."""
        if kind not in _TREAT:
            raise InvalidJobError("safety_checker_type", f"unknown treatment {kind!r}; use one of {', '.join(TREATMENTS)}")
        flags = self.check(images)
        return [self.treat(im, kind) if flag else im for im, flag in zip(images, flags)], flags
