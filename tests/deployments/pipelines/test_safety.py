"""Safety checker: tiny weights load, scores threshold, treatments hide the ORIGINAL image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deployments.errors import InvalidJobError
from deployments.pipelines.safety import TREATMENTS, SafetyChecker
from deployments.pipelines.tiny_safety import write_tiny_safety_checker


@pytest.fixture(scope="module")
def checker_dir(tmp_path_factory):
    return write_tiny_safety_checker(tmp_path_factory.mktemp("safety"))


@pytest.fixture(scope="module")
def never(checker_dir):
    return SafetyChecker.load(checker_dir, "cpu", torch.float32)


@pytest.fixture(scope="module")
def always(checker_dir):
    # every threshold is 1.0 and a cosine is at most 1: +3 puts every score above 0
    return SafetyChecker.load(checker_dir, "cpu", torch.float32, adjustment=3.0)


def _known_image(size: int = 64) -> Image.Image:
    """Noise on a left-right gradient: high variance, mean ~128, no black pixel."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(40, 215, size)[None, :, None].repeat(size, 0).repeat(3, 2)
    noise = rng.integers(-40, 40, (size, size, 3))
    return Image.fromarray(np.clip(gradient + noise, 1, 255).astype(np.uint8))


def test_layout_on_disk(checker_dir):
    assert {p.name for p in checker_dir.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert write_tiny_safety_checker(checker_dir.parent) == checker_dir  # present: skipped


def test_negative_leaves_images_unchanged(never):
    images = [_known_image(), Image.new("RGB", (48, 64), (255, 0, 0))]
    before = [np.asarray(im).copy() for im in images]
    treated, flags = never.screen(images, "black")
    assert flags == [False, False]
    assert all(a is b for a, b in zip(treated, images))
    for im, arr in zip(images, before):
        np.testing.assert_array_equal(np.asarray(im), arr)
    assert never.check([]) == []


def _max_concept_cosine(checker, image) -> float:
    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

    pixels = checker.processor(images=[image], return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = checker.model.visual_projection(checker.model.vision_model(pixels)[1])
        return float(cosine_distance(embeds, checker.model.concept_embeds).max())


def test_adjustment_moves_the_threshold_per_image(checker_dir, never):
    black, red = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), (255, 0, 0))
    a, b = _max_concept_cosine(never, black), _max_concept_cosine(never, red)
    assert abs(a - b) > 0.05, "the tiny checker should tell these two apart"
    # threshold (1.0 - adjustment) halfway between the two scores: exactly one is flagged
    middle = SafetyChecker.load(checker_dir, adjustment=1.0 - (a + b) / 2)
    assert middle.check([black, red]) == [a > b, b > a]


def test_all_flagged_with_large_adjustment(always):
    assert always.check([_known_image(), Image.new("RGB", (32, 96))]) == [True, True]


def test_black(always):
    original = _known_image()
    (out,), flags = always.screen([original], "black")
    assert flags == [True]
    assert out.size == original.size and not np.asarray(out).any()


def test_blur_is_the_original_blurred(always):
    original = _known_image()
    (out,), _ = always.screen([original], "blur")
    src, dst = np.asarray(original, float), np.asarray(out, float)
    assert out.size == original.size
    # the original, not the checker's black image: same overall brightness...
    assert abs(dst.mean() - src.mean()) < 5
    # ...with its fine detail gone
    assert np.abs(np.diff(dst, axis=1)).mean() < 0.1 * np.abs(np.diff(src, axis=1)).mean()
    # variance down each column (the gradient runs across, so this is the noise): mostly gone
    assert dst.var(axis=0).mean() < 0.25 * src.var(axis=0).mean()


def test_pixelate_makes_blocks_of_the_original(always):
    original = _known_image(64)
    (out,), _ = always.screen([original], "pixelate")
    src, dst = np.asarray(original, float), np.asarray(out)
    blocks = dst.reshape(4, 16, 4, 16, 3)  # 64 / 16 = 4 blocks a side, 16 px each
    assert (blocks == blocks[:, :1, :, :1, :]).all()
    # each block is the original's average there (BOX downscale), so not black
    expected = src.reshape(4, 16, 4, 16, 3).mean(axis=(1, 3))
    assert np.abs(blocks[:, 0, :, 0, :] - expected).max() <= 1


def test_sensitive_content_text(always):
    original = _known_image(128)
    (out,), _ = always.screen([original], "sensitive_content_text")
    arr = np.asarray(out)
    assert out.size == original.size
    centre = arr[54:74, 14:114]
    assert (centre > 128).any()  # white text in the middle
    border = np.concatenate([arr[:30].ravel(), arr[-30:].ravel(), arr[:, :8].ravel(), arr[:, -8:].ravel()])
    assert not border.any()  # on black, none of the original left
    assert (arr > 0).mean() < 0.3


@pytest.mark.parametrize("kind", TREATMENTS)
def test_every_treatment_keeps_size_and_mode(kind):
    image = _known_image().convert("RGBA").resize((80, 48))
    out = SafetyChecker.treat(image, kind)
    assert out.size == (80, 48) and out.mode == "RGB"
    assert not np.array_equal(np.asarray(out), np.asarray(image.convert("RGB")))


def test_unknown_treatment_is_invalid(always):
    with pytest.raises(InvalidJobError) as err:
        always.screen([_known_image()], "sepia")
    assert err.value.field == "safety_checker_type"
