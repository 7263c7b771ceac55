"""Input checks shared by the preprocessors."""

from __future__ import annotations

from PIL import Image

from deployments.errors import InvalidJobError


def rgb_input(image: Image.Image, field: str = "image", min_side: int = 1) -> Image.Image:
    """``image`` as RGB; a side under ``min_side`` px is the client's error (``InvalidJobError``)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image, got {type(image).__name__}")
    if image.width < min_side or image.height < min_side:
        raise InvalidJobError(
            field, f"the image is {image.width}x{image.height}; each side must be at least {min_side} px")
    return image if image.mode == "RGB" else image.convert("RGB")
