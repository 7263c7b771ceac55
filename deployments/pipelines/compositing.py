"""Putting a subject (an image and its mask) on something else: pure PIL/numpy, no model.

Used by Background Removal and by the families that call it for a mask (Replace
Background, Face Avatar). Every function takes the image in any mode (used as RGB) and
a mask in any mode (used as "L": 255 = subject, 0 = background); a mask of another size
is resized (bilinear) to the image's. Blending is ``image * a + other * (1 - a)`` with
``a = mask / 255`` in float, rounded once: where the mask is 255 the result's pixels are
the image's exactly, where it is 0 they are the other's exactly.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from deployments.errors import InvalidJobError

BLUR_FRACTION = 0.02  # the default blur: a Gaussian of standard deviation 2% of the image's longer side
MIN_BLUR_RADIUS = 2.0
_MIN_BACKGROUND_WEIGHT = 8  # of 255: below this, too little background is near a pixel to average it alone
_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``mask`` as mode "L" at ``size`` (resized bilinear when it is another size)."""
    mask = mask if mask.mode == "L" else mask.convert("L")
    return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)


def _blend(front: Image.Image, back: Image.Image, mask: Image.Image) -> Image.Image:
    """``front`` over ``back`` (same size, RGB) through ``mask`` (L, same size)."""
    alpha = np.asarray(mask, np.float32)[..., None] / 255.0
    out = np.asarray(front, np.float32) * alpha + np.asarray(back, np.float32) * (1.0 - alpha)
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="RGB")


def cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The subject on transparency: RGBA, the image's colours, alpha = the mask."""
    out = _rgb(image).copy()
    out.putalpha(fit_mask(mask, image.size))
    return out


def on_color(image: Image.Image, mask: Image.Image, rgb: tuple[int, int, int]) -> Image.Image:
    """The subject on a solid colour (opaque RGB)."""
    if len(rgb) != 3 or not all(0 <= int(v) <= 255 for v in rgb):
        raise ValueError(f"a colour is three values in 0..255, not {rgb!r}")
    front = _rgb(image)
    back = Image.new("RGB", front.size, (int(rgb[0]), int(rgb[1]), int(rgb[2])))
    return _blend(front, back, fit_mask(mask, front.size))


def cover(background: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``background`` scaled to cover ``size`` (aspect kept) and centre-cropped to it (RGB)."""
    return ImageOps.fit(_rgb(background), size, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def on_image(image: Image.Image, mask: Image.Image, background: Image.Image) -> Image.Image:
    """The subject on another picture, which covers the image and is centre-cropped (RGB)."""
    front = _rgb(image)
    return _blend(front, cover(background, front.size), fit_mask(mask, front.size))


def blur_radius(size: tuple[int, int]) -> float:
    """The default blur for an image of ``size``: proportional to its longer side."""
    return max(MIN_BLUR_RADIUS, BLUR_FRACTION * max(size))


def blurred(image: Image.Image, mask: Image.Image, radius: float | None = None) -> Image.Image:
    """The sharp subject on its own background, Gaussian-blurred (RGB).

    ``radius`` is the Gaussian's standard deviation in pixels (PIL's ``GaussianBlur``),
    :func:`blur_radius` by default. The background is blurred WITHOUT the subject (a
    mask-weighted average: blur(image x background weight) / blur(background weight)), so
    the subject's colours do not bleed into it as a halo; where almost no background is
    near (deep under the subject) the plain blur is used.
    """
    front = _rgb(image)
    alpha = fit_mask(mask, front.size)
    radius = blur_radius(front.size) if radius is None else float(radius)
    if not radius > 0:
        raise ValueError(f"blur radius must be > 0, not {radius!r}")
    gaussian = ImageFilter.GaussianBlur(radius)
    weight = np.asarray(ImageOps.invert(alpha), np.float32) / 255.0
    premultiplied = Image.fromarray(np.rint(np.asarray(front, np.float32) * weight[..., None]).astype(np.uint8), "RGB")
    numerator = np.asarray(premultiplied.filter(gaussian), np.float32)
    denominator = np.asarray(ImageOps.invert(alpha).filter(gaussian), np.float32)[..., None]
    plain = np.asarray(front.filter(gaussian), np.float32)
    safe = np.maximum(denominator, 1.0)
    background = np.where(denominator >= _MIN_BACKGROUND_WEIGHT, numerator * 255.0 / safe, plain)
    back = Image.fromarray(np.rint(np.clip(background, 0, 255)).astype(np.uint8), "RGB")
    return _blend(front, back, alpha)


def keep_subject(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """``original`` over ``generated`` through ``mask`` (RGB): where the mask is 255 the pixels
    ARE the original's. The two images must be the same size (a ValueError otherwise)."""
    if original.size != generated.size:
        raise ValueError(f"keep_subject: original {original.size} and generated {generated.size} differ in size")
    front = _rgb(original)
    return _blend(front, _rgb(generated), fit_mask(mask, front.size))


def parse_hex_color(value: str, field: str = "bg_color") -> tuple[int, int, int]:
    """``"#RRGGBB"`` or ``"#RGB"`` → ``(r, g, b)``; an InvalidJobError naming ``field`` otherwise."""
    text = value.strip() if isinstance(value, str) else ""
    if not _HEX.fullmatch(text):
        shown = repr(value)[:24]
        raise InvalidJobError(field, f"a colour is '#RRGGBB' or '#RGB' in hex digits (e.g. '#00ff00'), not {shown}")
    digits = text[1:]
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)
