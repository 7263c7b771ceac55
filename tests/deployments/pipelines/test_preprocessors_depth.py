"""Depth preprocessor: normalisation, and the tiny Depth-Anything model end to end."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from deployments.errors import InvalidJobError
from deployments.pipelines.preprocessors import DepthEstimator, normalize_depth
from deployments.pipelines.tiny_preprocessors import write_tiny_depth


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory):
    return write_tiny_depth(tmp_path_factory.mktemp("preprocessors"))


@pytest.fixture(scope="module")
def estimator(depth_dir):
    return DepthEstimator.load(depth_dir)


def _noise(size, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_normalize_maps_min_to_0_and_max_to_255():
    out = normalize_depth(np.array([[1.0, 2.0], [3.0, 5.0]]))
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 64], [128, 255]]
    assert normalize_depth(np.array([[-3.0, -1.0]])).tolist() == [[0, 255]]


def test_normalize_constant_map_is_all_zeros():
    out = normalize_depth(np.full((4, 6), 7.5))
    assert out.shape == (4, 6) and not out.any()


def test_normalize_rejects_non_finite():
    with pytest.raises(ValueError):
        normalize_depth(np.array([[0.0, np.nan]]))


def test_tiny_depth_dir_layout(depth_dir):
    assert {p.name for p in depth_dir.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert (depth_dir / "model.safetensors").stat().st_size < 5_000_000


def test_tiny_depth_is_deterministic(depth_dir, tmp_path):
    again = write_tiny_depth(tmp_path)
    first, second = load_file(depth_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("size", [(64, 64), (96, 40), (37, 71)])
def test_depth_map_has_the_input_size_and_full_range(estimator, size):
    raw = estimator.predict(_noise(size))
    assert raw.shape == (size[1], size[0])
    assert raw.max() > raw.min()  # the tiny model's output varies, so the map must use 0..255
    out = estimator(_noise(size))
    assert out.mode == "RGB" and out.size == size
    array = np.asarray(out)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    assert array.min() == 0 and array.max() == 255
    np.testing.assert_array_equal(array[..., 0], normalize_depth(raw))


def test_depth_accepts_non_rgb_modes(estimator):
    out = estimator(_noise((48, 32)).convert("L"))
    assert out.mode == "RGB" and out.size == (48, 32)


def test_depth_loads_in_another_dtype(depth_dir):
    half = DepthEstimator.load(depth_dir, dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    out = half(_noise((64, 64)))
    assert out.size == (64, 64) and np.asarray(out).max() == 255


def test_empty_image_is_the_clients_error(estimator):
    with pytest.raises(InvalidJobError):
        estimator(Image.new("RGB", (10, 0)))
