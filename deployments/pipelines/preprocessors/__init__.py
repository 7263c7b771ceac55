"""ControlNet preprocessors: a reference image → the conditioning image a ControlNet expects.

* :func:`canny` — OpenCV Canny edges, white on black (canny ControlNets).
* :class:`DepthEstimator` — a transformers depth model (Depth-Anything / DPT),
  a grey RGB depth map normalised to 0..255 (depth ControlNets).
* :class:`PoseEstimator` — a transformers ViTPose keypoint model, drawn as an
  OpenPose skeleton by :func:`draw_openpose` (openpose ControlNets).

Every output is an RGB ``PIL.Image`` the same size as the input.
"""

from deployments.pipelines.preprocessors.canny import canny
from deployments.pipelines.preprocessors.depth import DepthEstimator, normalize_depth
from deployments.pipelines.preprocessors.pose import (
    COCO_KEYPOINTS,
    OPENPOSE_COLORS,
    OPENPOSE_FROM_COCO,
    OPENPOSE_LIMBS,
    PoseEstimator,
    coco_to_openpose,
    draw_openpose,
)

__all__ = [
    "COCO_KEYPOINTS",
    "OPENPOSE_COLORS",
    "OPENPOSE_FROM_COCO",
    "OPENPOSE_LIMBS",
    "DepthEstimator",
    "PoseEstimator",
    "canny",
    "coco_to_openpose",
    "draw_openpose",
    "normalize_depth",
]
