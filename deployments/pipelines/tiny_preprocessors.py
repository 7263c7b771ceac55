"""Tiny random-weight preprocessor models, built from configs with no model hub.

``write_tiny_depth(out_dir)`` writes a Depth-Anything model (a 4-layer, 32-wide
DINOv2 backbone) with its DPT image processor at 56 px; ``write_tiny_pose(out_dir)``
writes a ViTPose model (a 2-layer, 32-wide ViT) with its image processor at
64x48 px. Both are saved with ``save_pretrained`` (``config.json``,
``model.safetensors``, ``preprocessor_config.json``) and load through the same
``from_pretrained`` path real weights use (:class:`DepthEstimator` / :class:`PoseEstimator`).

**Random weights: the depth maps and skeletons they give mean nothing.** They are
for tests and the embedded default run. Deterministic: ``torch.manual_seed``
runs before each model init.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTImageProcessorPil,
    VitPoseBackboneConfig,
    VitPoseConfig,
    VitPoseForPoseEstimation,
    VitPoseImageProcessorPil,
)

_SEED = 0
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]
DEPTH_NAME = "tiny-depth"
POSE_NAME = "tiny-pose"


def write_tiny_depth(out_dir: Path) -> Path:
    """Write a tiny Depth-Anything model + image processor to ``out_dir/tiny-depth``; return it."""
    target = Path(out_dir) / DEPTH_NAME
    # Config classes accept extra kwargs (``strict(accept_kwargs=True)``) that their
    # ``dataclass_transform`` signature hides from mypy: ``out_indices``, ``num_labels``.
    backbone = Dinov2Config(  # type: ignore[call-arg]
        image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, out_indices=[1, 2, 3, 4], reshape_hidden_states=False, initializer_range=0.1,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8, initializer_range=0.1,
    )
    torch.manual_seed(_SEED)
    model = DepthAnythingForDepthEstimation(config).eval()
    # Random weights give a near-zero map that the head's final ReLU mostly clips to 0;
    # a positive last bias keeps it positive and varying (also in fp16).
    with torch.no_grad():
        model.head.conv3.bias.fill_(0.5)
    model.save_pretrained(target, safe_serialization=True)
    # As Depth-Anything's own processor config, only at 56 px instead of 518.
    DPTImageProcessorPil(
        do_resize=True, size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
        resample=3, do_rescale=True, do_normalize=True, image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD,
        do_pad=False,
    ).save_pretrained(target)
    return target


def write_tiny_pose(out_dir: Path) -> Path:
    """Write a tiny ViTPose model + image processor to ``out_dir/tiny-pose``; return it."""
    target = Path(out_dir) / POSE_NAME
    backbone = VitPoseBackboneConfig(  # type: ignore[call-arg]  # out_indices: see write_tiny_depth
        image_size=[64, 48], patch_size=[8, 8], hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        mlp_ratio=2, out_indices=[2],
    )
    config = VitPoseConfig(  # type: ignore[call-arg]  # num_labels: see write_tiny_depth
        backbone_config=backbone, num_labels=17, scale_factor=4, use_simple_decoder=True
    )
    torch.manual_seed(_SEED)
    VitPoseForPoseEstimation(config).eval().save_pretrained(target, safe_serialization=True)
    VitPoseImageProcessorPil(
        size={"height": 64, "width": 48}, do_affine_transform=True, do_rescale=True, do_normalize=True,
        image_mean=_IMAGENET_MEAN, image_std=_IMAGENET_STD,
    ).save_pretrained(target)
    return target
