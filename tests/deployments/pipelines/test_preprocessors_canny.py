"""Canny preprocessor: edges of a known shape land on its border, nowhere else."""

import numpy as np
import pytest
from PIL import Image

from deployments.errors import InvalidJobError
from deployments.pipelines.preprocessors import canny


def _square(size=(64, 64), box=(16, 16, 48, 48)) -> Image.Image:
    """White square on black; ``box`` is (left, top, right, bottom), right/bottom exclusive."""
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    left, top, right, bottom = box
    array[top:bottom, left:right] = 255
    return Image.fromarray(array)


def _distance_to_border(y: int, x: int, box) -> float:
    """Chebyshev distance from pixel (y, x) to the square's outline (its outer ring of pixels)."""
    left, top, right, bottom = box
    inside = left <= x < right and top <= y < bottom
    if inside:
        return min(x - left, right - 1 - x, y - top, bottom - 1 - y)
    dx = max(left - x, 0, x - (right - 1))
    dy = max(top - y, 0, y - (bottom - 1))
    return max(dx, dy)


@pytest.mark.parametrize("size, box", [((64, 64), (16, 16, 48, 48)), ((96, 40), (30, 8, 70, 30))])
def test_edges_of_a_white_square_lie_on_its_border(size, box):
    out = canny(_square(size, box))
    assert out.mode == "RGB" and out.size == size
    array = np.asarray(out)
    assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    assert set(np.unique(array)) <= {0, 255}
    ys, xs = np.nonzero(array[..., 0])
    assert len(ys) > 0
    assert max(_distance_to_border(y, x, box) for y, x in zip(ys, xs)) <= 1
    # every side of the square is traced along (almost) its whole length
    left, top, right, bottom = box
    edges = array[..., 0] > 0
    for side in (edges[top:bottom, left - 1:left + 1].any(axis=1), edges[top:bottom, right - 1:right + 1].any(axis=1),
                 edges[top - 1:top + 1, left:right].any(axis=0), edges[bottom - 1:bottom + 1, left:right].any(axis=0)):
        assert side.mean() >= 0.9


def test_flat_image_has_no_edges_and_any_mode_is_accepted():
    out = canny(Image.new("L", (40, 30), 128))
    assert out.mode == "RGB" and out.size == (40, 30)
    assert not np.asarray(out).any()


def test_thresholds_gate_weak_edges():
    # a step of 40 grey levels: an edge at low thresholds, none when both exceed its gradient
    array = np.zeros((32, 32), dtype=np.uint8)
    array[:, 16:] = 40
    image = Image.fromarray(array)
    assert np.asarray(canny(image, 10, 20)).any()
    assert not np.asarray(canny(image, 500, 600)).any()


@pytest.mark.parametrize("low, high, field", [(-1, 200, "low_threshold"), (200, 100, "high_threshold")])
def test_bad_thresholds_are_the_clients_error(low, high, field):
    with pytest.raises(InvalidJobError) as info:
        canny(_square(), low, high)
    assert info.value.field == field


def test_empty_image_is_the_clients_error():
    with pytest.raises(InvalidJobError) as info:
        canny(Image.new("RGB", (0, 10)))
    assert info.value.field == "image"
