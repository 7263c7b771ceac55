"""Body pose for openpose ControlNets: ViTPose keypoints drawn as an OpenPose skeleton.

ViTPose (``VitPoseForPoseEstimation``, e.g. ``usyd-community/vitpose-base-simple``)
is a *top-down* model: it finds the 17 COCO keypoints of one person inside a given
box. This module runs no person detector: **the whole image is the one box**, so it
suits a reference image of one person that fills most of the frame; with several
people it returns one (mixed) skeleton. ViTPose+ (mixture-of-experts) checkpoints
run with the COCO expert (``dataset_index`` 0). The image processor runs on the PIL
backend (scipy affine warp), so torchvision is not needed.

The drawing (:func:`draw_openpose`) is a pure function and reproduces
lllyasviel's / controlnet_aux's ``draw_bodypose``: the 18-keypoint OpenPose body
layout (neck = midpoint of the shoulders), its 17 limbs as ellipses of half-width
4 px in the limb colour scaled by 0.6, then each joint as a radius-4 disc in the
full joint colour, on black.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, VitPoseForPoseEstimation

from deployments.pipelines.preprocessors._image import rgb_input

#: COCO-17 keypoint order (ViTPose's output order).
COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
#: For each of OpenPose's 18 body keypoints (nose, neck, r-shoulder, r-elbow, r-wrist,
#: l-shoulder, l-elbow, l-wrist, r-hip, r-knee, r-ankle, l-hip, l-knee, l-ankle,
#: r-eye, l-eye, r-ear, l-ear), its COCO index; ``None`` is the neck (derived).
OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
#: The 17 limbs OpenPose draws, as 0-based pairs of OpenPose keypoints
#: (lllyasviel's 1-based ``limbSeq[:17]`` minus one).
OPENPOSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
#: OpenPose colours (RGB): limb ``i`` and joint ``i`` both use ``OPENPOSE_COLORS[i]``.
OPENPOSE_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
_STICK_WIDTH = 4
_JOINT_RADIUS = 4
_LIMB_DIM = 0.6
#: transformers' PIL ViTPose processor misreads the channel axis of images under 4 px
#: tall (its affine step guesses the layout from the shape), so smaller ones are refused.
MIN_SIDE = 4

Keypoint = tuple[float, float, float]


def coco_to_openpose(keypoints: Sequence[Keypoint], threshold: float = 0.3) -> list[tuple[float, float] | None]:
    """COCO-17 ``(x, y, score)`` → the 18 OpenPose points, ``None`` where not confident.

    A point is kept when its score is above ``threshold``; the neck is the midpoint of
    the shoulders and exists only when both shoulders are kept.
    """
    if len(keypoints) != len(COCO_KEYPOINTS):
        raise ValueError(f"expected {len(COCO_KEYPOINTS)} COCO keypoints, got {len(keypoints)}")
    kept = [(float(x), float(y)) if float(s) > threshold else None for x, y, s in keypoints]
    left, right = kept[5], kept[6]
    neck = ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2) if left and right else None
    return [neck if coco is None else kept[coco] for coco in OPENPOSE_FROM_COCO]


def draw_openpose(keypoints: Sequence[Keypoint], size: tuple[int, int], threshold: float = 0.3) -> Image.Image:
    """Draw COCO-17 keypoints (pixel ``(x, y, score)``) as an OpenPose skeleton.

    ``size`` is ``(width, height)``; keypoints with ``score <= threshold`` (and
    the limbs touching them) are not drawn.
    """
    width, height = size
    points = coco_to_openpose(keypoints, threshold)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for (a, b), color in zip(OPENPOSE_LIMBS, OPENPOSE_COLORS):
        pa, pb = points[a], points[b]
        if pa is None or pb is None:
            continue
        (xa, ya), (xb, yb) = pa, pb
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        center = (int((xa + xb) / 2), int((ya + yb) / 2))
        # cv2's stub says a sequence of points; it returns an int32 (N, 2) array (asarray: no copy).
        polygon = np.asarray(cv2.ellipse2Poly(center, (int(length / 2), _STICK_WIDTH), int(angle), 0, 360, 1), dtype=np.int32)
        cv2.fillConvexPoly(canvas, polygon, color)
    canvas = (canvas * _LIMB_DIM).astype(np.uint8)
    for point, color in zip(points, OPENPOSE_COLORS):
        if point is not None:
            cv2.circle(canvas, (int(point[0]), int(point[1])), _JOINT_RADIUS, color, thickness=-1)
    return Image.fromarray(canvas, mode="RGB")


class PoseEstimator:
    """A ViTPose model and its image processor; call it on an image to get the skeleton."""

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype, threshold: float = 0.3):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.threshold = threshold

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             threshold: float = 0.3) -> PoseEstimator:
        """Load model + image processor from the local directory ``path`` (no hub access)."""
        path = str(path)
        processor = AutoImageProcessor.from_pretrained(path, backend="pil", local_files_only=True)
        model = VitPoseForPoseEstimation.from_pretrained(path, dtype=dtype, local_files_only=True)
        if model.config.num_labels != len(COCO_KEYPOINTS):
            raise ValueError(f"{path}: expected a COCO-17 keypoint model, it has {model.config.num_labels} keypoints")
        device = torch.device(device)
        # transformers declares ``to`` through functools.wraps, which mypy reads as unbound (self = device).
        return cls(model.to(device).eval(), processor, device, dtype, threshold)  # type: ignore[arg-type]

    @torch.inference_mode()
    def keypoints(self, image: Image.Image) -> list[Keypoint]:
        """The 17 COCO keypoints ``(x, y, score)`` in pixels of ``image`` (whole image = the box)."""
        image = rgb_input(image, min_side=MIN_SIDE)
        boxes = [[[0.0, 0.0, float(image.width), float(image.height)]]]  # COCO (x, y, w, h)
        inputs = self.processor(image, boxes=boxes, return_tensors="pt", input_data_format="channels_last")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        extra = {}
        if self.model.config.backbone_config.num_experts > 1:  # ViTPose+ (MoE): expert 0 is COCO's
            extra["dataset_index"] = torch.zeros(pixel_values.shape[0], dtype=torch.long, device=self.device)
        outputs = self.model(pixel_values=pixel_values, **extra)
        outputs.heatmaps = outputs.heatmaps.float()
        (person,) = self.processor.post_process_pose_estimation(outputs, boxes=boxes)[0]
        xy = person["keypoints"].cpu().numpy()
        scores = person["scores"].reshape(-1).cpu().numpy()
        return [(float(x), float(y), float(s)) for (x, y), s in zip(xy, scores)]

    def __call__(self, image: Image.Image) -> Image.Image:
        """The OpenPose skeleton of ``image``, an RGB image of the same size."""
        image = rgb_input(image, min_side=MIN_SIDE)
        return draw_openpose(self.keypoints(image), image.size, self.threshold)
