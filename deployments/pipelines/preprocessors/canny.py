"""Canny edges for canny ControlNets (white edges on black, RGB)."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from deployments.errors import InvalidJobError
from deployments.pipelines.preprocessors._image import rgb_input


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """OpenCV Canny edges of ``image``, as a 3-channel RGB image of the same size.

    As in diffusers' ControlNet examples, the edges are found on the RGB array
    itself (OpenCV takes the strongest gradient over the channels) and the
    single-channel edge map is repeated into R, G and B. ``low``/``high`` are the
    hysteresis thresholds on the gradient magnitude; ``0 <= low <= high``.
    """
    if low < 0:
        raise InvalidJobError("low_threshold", f"must be >= 0, got {low}")
    if high < low:
        raise InvalidJobError("high_threshold", f"must be >= low_threshold ({low}), got {high}")
    array = np.asarray(rgb_input(image))
    edges = cv2.Canny(np.ascontiguousarray(array), int(low), int(high))
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2), mode="RGB")
