"""The Stable Diffusion x4 upscaler wrapper on the tiny pipeline: loads through
``from_pretrained``, makes exactly 4x for any input size, is reproducible per seed and
guided by the prompt."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from deployments.errors import InvalidJobError
from deployments.pipelines.sd_upscale import SDUpscaler, load_sd_upscaler, pad_to_multiple
from deployments.pipelines.tiny_upscalers import write_tiny_sd_x4

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory) -> SDUpscaler:
    target = write_tiny_sd_x4(tmp_path_factory.mktemp("tiny-sd-x4-upscaler"))
    return load_sd_upscaler(str(target))


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def run(upscaler: SDUpscaler, image: Image.Image, **kwargs) -> Image.Image:
    options: dict[str, Any] = {"prompt": "a cat", "seed": 1, "num_inference_steps": 2}
    options.update(kwargs)
    return upscaler.upscale(image, **options)


def test_the_tiny_pipeline_loads_as_an_x4_upscaler(upscaler):
    from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline

    pipe = upscaler.pipe
    assert isinstance(pipe, StableDiffusionUpscalePipeline)
    assert isinstance(pipe.low_res_scheduler, DDPMScheduler)
    assert (pipe.vae_scale_factor, pipe.unet.config.in_channels, pipe.unet.config.out_channels) == (4, 7, 4)
    assert upscaler.max_noise_level == 350
    assert (upscaler.device, upscaler.dtype) == ("cpu", "float32")


@pytest.mark.parametrize("size", [(16, 12), (37, 23)])
def test_output_is_exactly_4x(upscaler, size):
    out = run(upscaler, noise_image(*size))
    assert out.mode == "RGB"
    assert out.size == (size[0] * 4, size[1] * 4)
    assert pixels(out).std() > 1


def test_same_seed_same_image_other_seed_other_image(upscaler):
    image = noise_image(16, 12)
    a, b, c = run(upscaler, image, seed=7), run(upscaler, image, seed=7), run(upscaler, image, seed=8)
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).max() > 0


def test_the_prompt_and_the_input_guide_the_output(upscaler):
    image = noise_image(16, 12)
    base = pixels(run(upscaler, image, guidance_scale=7.5))
    assert np.abs(base - pixels(run(upscaler, image, prompt="a dog on a red car", guidance_scale=7.5))).max() > 0
    assert np.abs(base - pixels(run(upscaler, noise_image(16, 12, seed=5), guidance_scale=7.5))).max() > 0


def test_progress_reports_every_step(upscaler):
    steps: list[tuple[int, int]] = []
    run(upscaler, noise_image(16, 12), num_inference_steps=3, on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(("field", "kwargs"), [
    ("noise_level", {"noise_level": 351}),
    ("noise_level", {"noise_level": -1}),
    ("num_inference_steps", {"num_inference_steps": 0}),
    ("guidance_scale", {"guidance_scale": -1.0}),
])
def test_out_of_range_options_are_refused(upscaler, field, kwargs):
    with pytest.raises(InvalidJobError) as info:
        run(upscaler, noise_image(8, 8), **kwargs)
    assert info.value.field == field


def test_pad_to_multiple_repeats_edge_pixels():
    image = noise_image(5, 3)
    padded = pad_to_multiple(image, 4)
    assert padded.size == (8, 4)
    array, source = pixels(padded), pixels(image)
    assert np.array_equal(array[:3, :5], source)
    assert np.array_equal(array[3, :5], source[2])  # the last row repeated
    assert np.array_equal(array[:3, 7], source[:, 4])  # the last column repeated
    assert pad_to_multiple(noise_image(8, 4), 4).size == (8, 4)
