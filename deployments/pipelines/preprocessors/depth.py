"""Monocular depth for depth ControlNets, through transformers' depth-estimation models.

Any ``AutoModelForDepthEstimation`` checkpoint with a ``post_process_depth_estimation``
image processor works; the default choice is Depth-Anything (V2) — e.g.
``depth-anything/Depth-Anything-V2-Small-hf`` — whose DPT image processor runs on
the PIL backend, so torchvision is not needed. The output is *relative* inverse
depth (near = bright), which is what the SDXL/SD1.5 depth ControlNets were trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForDepthEstimation

from deployments.pipelines.preprocessors._image import rgb_input


def normalize_depth(depth: np.ndarray) -> np.ndarray:
    """Scale a 2-D depth map to uint8: min → 0, max → 255; a constant map → all zeros."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"expected a 2-D depth map, got shape {depth.shape}")
    if not np.isfinite(depth).all():
        raise ValueError("the depth map has non-finite values")
    low, high = depth.min(), depth.max()
    if high == low:
        return np.zeros(depth.shape, dtype=np.uint8)
    return np.rint((depth - low) / (high - low) * 255.0).astype(np.uint8)


class DepthEstimator:
    """A depth model and its image processor; call it on an image to get the depth map."""

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> DepthEstimator:
        """Load model + image processor from the local directory ``path`` (no hub access)."""
        path = str(path)
        processor = AutoImageProcessor.from_pretrained(path, backend="pil", local_files_only=True)
        model = AutoModelForDepthEstimation.from_pretrained(path, dtype=dtype, local_files_only=True)
        device = torch.device(device)
        return cls(model.to(device).eval(), processor, device, dtype)

    @torch.inference_mode()
    def predict(self, image: Image.Image) -> np.ndarray:
        """The raw depth map (float32, ``(height, width)`` of the input image)."""
        image = rgb_input(image)
        inputs = self.processor(images=image, return_tensors="pt", input_data_format="channels_last")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        outputs = self.model(pixel_values=pixel_values)
        outputs.predicted_depth = outputs.predicted_depth.float()
        (result,) = self.processor.post_process_depth_estimation(
            outputs, target_sizes=[(image.height, image.width)])
        return result["predicted_depth"].reshape(image.height, image.width).cpu().numpy()

    def __call__(self, image: Image.Image) -> Image.Image:
        """The depth map as a grey RGB image the size of ``image``, normalised to 0..255."""
        grey = normalize_depth(self.predict(image))
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")
