"""Pose preprocessor: the OpenPose drawing from known keypoints, and the tiny ViTPose end to end."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from deployments.errors import InvalidJobError
from deployments.pipelines.preprocessors import (
    COCO_KEYPOINTS,
    OPENPOSE_COLORS,
    PoseEstimator,
    coco_to_openpose,
    draw_openpose,
)
from deployments.pipelines.tiny_preprocessors import write_tiny_pose

# A standing figure on a 160x200 canvas, COCO-17 order, (x, y) in pixels.
_FIGURE = {
    "nose": (80, 20), "left_eye": (88, 12), "right_eye": (72, 12), "left_ear": (100, 20), "right_ear": (60, 20),
    "left_shoulder": (110, 50), "right_shoulder": (50, 50), "left_elbow": (130, 90), "right_elbow": (30, 90),
    "left_wrist": (140, 130), "right_wrist": (20, 130), "left_hip": (100, 120), "right_hip": (60, 120),
    "left_knee": (105, 155), "right_knee": (55, 155), "left_ankle": (108, 195), "right_ankle": (52, 195),
}
_SIZE = (160, 200)


def _keypoints(scores: dict[str, float] | None = None) -> list[tuple[float, float, float]]:
    scores = scores or {}
    return [(*_FIGURE[name], scores.get(name, 0.9)) for name in COCO_KEYPOINTS]


def _pixel(image: Image.Image, xy) -> tuple[int, ...]:
    return tuple(int(v) for v in image.getpixel((int(xy[0]), int(xy[1]))))


def _mid(a: str, b: str, t: float = 0.5) -> tuple[float, float]:
    """The point a fraction ``t`` of the way from joint ``a`` to joint ``b``."""
    (xa, ya), (xb, yb) = _FIGURE[a], _FIGURE[b]
    return xa + t * (xb - xa), ya + t * (yb - ya)


def _limb_colour(index: int) -> np.ndarray:
    return 0.6 * np.array(OPENPOSE_COLORS[index])


# (COCO joint a, COCO joint b, OpenPose limb index) for limbs whose midpoint no other limb or joint covers.
_LIMBS = [
    ("right_shoulder", "right_elbow", 2), ("right_elbow", "right_wrist", 3),
    ("left_shoulder", "left_elbow", 4), ("left_elbow", "left_wrist", 5),
    ("right_hip", "right_knee", 7), ("right_knee", "right_ankle", 8),
    ("left_hip", "left_knee", 10), ("left_knee", "left_ankle", 11),
]


@pytest.fixture(scope="module")
def pose_dir(tmp_path_factory):
    return write_tiny_pose(tmp_path_factory.mktemp("preprocessors"))


@pytest.fixture(scope="module")
def estimator(pose_dir):
    return PoseEstimator.load(pose_dir)


def test_coco_to_openpose_layout():
    points = coco_to_openpose(_keypoints())
    assert len(points) == 18
    assert points[0] == _FIGURE["nose"]
    assert points[1] == (80.0, 50.0)  # neck: midpoint of the shoulders
    assert points[2] == _FIGURE["right_shoulder"] and points[5] == _FIGURE["left_shoulder"]
    assert points[4] == _FIGURE["right_wrist"] and points[13] == _FIGURE["left_ankle"]
    assert points[14] == _FIGURE["right_eye"] and points[17] == _FIGURE["left_ear"]


def test_neck_needs_both_shoulders():
    points = coco_to_openpose(_keypoints({"left_shoulder": 0.1}))
    assert points[1] is None and points[5] is None and points[2] == _FIGURE["right_shoulder"]


@pytest.mark.parametrize("a, b, limb", _LIMBS)
def test_limb_midpoint_has_the_limb_colour(a, b, limb):
    image = draw_openpose(_keypoints(), _SIZE)
    assert image.mode == "RGB" and image.size == _SIZE
    for t in (0.3, 0.5, 0.7):  # along the limb, clear of the joint discs
        np.testing.assert_allclose(_pixel(image, _mid(a, b, t)), _limb_colour(limb), atol=1)


def test_colours_are_openposes_in_rgb_order():
    image = draw_openpose(_keypoints(), _SIZE)
    assert _pixel(image, _FIGURE["nose"]) == (255, 0, 0)
    assert _pixel(image, (80, 50)) == (255, 85, 0)  # neck
    assert _pixel(image, _FIGURE["right_elbow"]) == (255, 255, 0)
    assert _pixel(image, _FIGURE["right_wrist"]) == (170, 255, 0)
    assert _pixel(image, _mid("right_shoulder", "right_elbow")) == (153, 102, 0)  # 0.6 x (255, 170, 0)
    assert _pixel(image, _mid("left_knee", "left_ankle")) == (0, 51, 153)  # 0.6 x (0, 85, 255)


def test_joints_have_their_full_colour_and_background_is_black():
    image = draw_openpose(_keypoints(), _SIZE)
    assert _pixel(image, _FIGURE["nose"]) == OPENPOSE_COLORS[0]
    assert _pixel(image, (80, 50)) == OPENPOSE_COLORS[1]  # neck, orange (RGB order, not BGR)
    assert _pixel(image, _FIGURE["right_wrist"]) == OPENPOSE_COLORS[4]
    assert _pixel(image, _FIGURE["left_ankle"]) == OPENPOSE_COLORS[13]
    assert _pixel(image, _FIGURE["left_ear"]) == OPENPOSE_COLORS[17]
    for corner in [(2, 2), (157, 2), (2, 197), (80, 180)]:
        assert _pixel(image, corner) == (0, 0, 0)
    # neck → nose limb (OpenPose limb 12, blue)
    np.testing.assert_allclose(_pixel(image, (80, 35)), _limb_colour(12), atol=1)


def test_low_score_keypoints_and_their_limbs_are_not_drawn():
    full = draw_openpose(_keypoints(), _SIZE)
    image = draw_openpose(_keypoints({"left_wrist": 0.2, "left_shoulder": 0.3}), _SIZE)
    for xy in (_FIGURE["left_wrist"], _mid("left_elbow", "left_wrist"), _FIGURE["left_shoulder"],
               _mid("left_shoulder", "left_elbow"), (80, 50), (80, 35)):  # neck and neck→nose go too
        assert _pixel(image, xy) == (0, 0, 0)
    assert _pixel(image, _FIGURE["left_elbow"]) == OPENPOSE_COLORS[6]
    assert _pixel(image, _mid("right_shoulder", "right_elbow")) == _pixel(full, _mid("right_shoulder", "right_elbow"))


def test_nothing_confident_draws_nothing():
    assert not np.asarray(draw_openpose(_keypoints({n: 0.0 for n in COCO_KEYPOINTS}), (64, 48))).any()
    assert np.asarray(draw_openpose(_keypoints(), (64, 48), threshold=0.95)).sum() == 0


def test_threshold_is_on_the_score():
    image = draw_openpose(_keypoints({"nose": 0.5}), _SIZE, threshold=0.6)
    assert _pixel(image, _FIGURE["nose"]) == (0, 0, 0)
    image = draw_openpose(_keypoints({"nose": 0.5}), _SIZE, threshold=0.4)
    assert _pixel(image, _FIGURE["nose"]) == OPENPOSE_COLORS[0]


def test_draw_needs_17_keypoints():
    with pytest.raises(ValueError):
        draw_openpose(_keypoints()[:16], _SIZE)


def test_tiny_pose_dir_layout_and_determinism(pose_dir, tmp_path):
    assert {p.name for p in pose_dir.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    first, second = load_file(pose_dir / "model.safetensors"), load_file(write_tiny_pose(tmp_path) / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("size", [(64, 64), (96, 40), (33, 70)])
def test_estimator_runs_and_draws_its_keypoints(estimator, size):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    keypoints = estimator.keypoints(image)
    assert len(keypoints) == 17 and all(len(k) == 3 and all(np.isfinite(k)) for k in keypoints)
    assert any(score > estimator.threshold for _, _, score in keypoints)  # the tiny model draws something
    out = estimator(image)
    assert out.mode == "RGB" and out.size == size and np.asarray(out).any()
    np.testing.assert_array_equal(np.asarray(out), np.asarray(draw_openpose(keypoints, size, estimator.threshold)))


def test_estimator_threshold_applies(pose_dir):
    strict = PoseEstimator.load(pose_dir, threshold=float("inf"))
    assert not np.asarray(strict(Image.new("RGB", (64, 64), (90, 30, 10)))).any()


def test_too_small_image_is_the_clients_error(estimator):
    with pytest.raises(InvalidJobError) as info:
        estimator(Image.new("RGB", (64, 3)))
    assert info.value.field == "image"



def _write_vitpose(directory, **backbone_kwargs) -> None:
    from transformers import (
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessorPil,
    )

    num_labels = backbone_kwargs.pop("num_labels", 17)
    backbone = VitPoseBackboneConfig(image_size=[64, 48], patch_size=[8, 8], hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, mlp_ratio=2, out_indices=[1], **backbone_kwargs)
    torch.manual_seed(0)
    VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=num_labels)).save_pretrained(directory)
    VitPoseImageProcessorPil(size={"height": 64, "width": 48}).save_pretrained(directory)


def test_vitpose_plus_runs_with_the_coco_expert(tmp_path):
    _write_vitpose(tmp_path, num_experts=2, part_features=8)
    out = PoseEstimator.load(tmp_path)(Image.new("RGB", (50, 70), (200, 100, 50)))
    assert out.mode == "RGB" and out.size == (50, 70)


def test_non_coco_keypoint_model_is_refused_at_load(tmp_path):
    _write_vitpose(tmp_path, num_labels=5)
    with pytest.raises(ValueError, match="COCO-17"):
        PoseEstimator.load(tmp_path)
