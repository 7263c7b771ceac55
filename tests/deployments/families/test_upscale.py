"""The upscaling families in process (tiny models, in-memory store): ``run`` stores one PNG of
exactly scale x the input; scales the app does not make, outputs over the pixel cap and
oversized inputs are refused naming the field."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from deployments.errors import InvalidJobError
from deployments.families.upscale import SDUpscalerFamily, UpscalerFamily
from deployments.pipelines.tiny_upscalers import write_tiny_esrgan, write_tiny_sd_x4
from deployments.types import UpscaleJob
from tests.deployments.conftest import MemoryStore

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def esrgan_dir(tmp_path_factory):
    target = tmp_path_factory.mktemp("tiny-esrgan-4x")
    write_tiny_esrgan(target)
    return target


@pytest.fixture(scope="module")
def esrgan(esrgan_dir):
    return UpscalerFamily(str(esrgan_dir), store=MemoryStore(), family="esrgan", gpu="a10g", tile=16, tile_overlap=8)


@pytest.fixture(scope="module")
def sd_x4(tmp_path_factory):
    target = write_tiny_sd_x4(tmp_path_factory.mktemp("tiny-sd-x4-upscaler"))
    return SDUpscalerFamily(str(target), store=MemoryStore(), family="sd-x4", gpu="a10g")


def noise_image(width: int = 37, height: int = 23) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def job(**kw) -> UpscaleJob:
    fields: dict[str, Any] = dict(task="upscale", tenant="acme", request_id="r-1", image=noise_image(), scale=4)
    fields.update(kw)
    return UpscaleJob(**fields)


def stored_png(family, result) -> Image.Image:
    (output,) = result.outputs
    data, content_type = family.store.objects[output.key]
    assert content_type == "image/png" == output.content_type
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_upscaler_stores_a_png_of_exactly_scale_times_the_input(esrgan, scale):
    result = asyncio.run(esrgan.run(job(scale=scale, request_id=f"r-{scale}")))
    image = stored_png(esrgan, result)
    assert image.size == (37 * scale, 23 * scale)
    assert result.outputs[0].key == f"tenants/acme/images/r-{scale}/0.png"
    assert result.meta == {"width": 37 * scale, "height": 23 * scale, "scale": scale} == result.outputs[0].meta
    expected = esrgan.upscaler.upscale(noise_image(), scale)  # what the model makes, bit for bit
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))


def test_an_output_over_the_pixel_cap_is_refused_naming_scale_and_the_limit(esrgan_dir):
    family = UpscalerFamily(str(esrgan_dir), store=MemoryStore(), max_output_pixels=150 * 100)
    asyncio.run(family.run(job(scale=4)))  # 148x92 fits
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(family.run(job(scale=8)))
    assert info.value.field == "scale"
    assert "15000" in info.value.message and "296x184" in info.value.message
    assert family.store.objects.keys() == {"tenants/acme/images/r-1/0.png"}  # the refused job stored nothing


@pytest.mark.parametrize(("field", "kwargs"), [
    ("scale", {"scale": 3}),
    ("image", {"image": None}),
    ("image", {"image": noise_image(1537, 8)}),
    ("task", {"task": "sd_upscale"}),
])
def test_upscaler_refuses_jobs_it_cannot_do(esrgan, field, kwargs):
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(esrgan.run(job(**kwargs)))
    assert info.value.field == field


def test_upscaler_reports_progress_and_facts(esrgan):
    steps: list[tuple[int, int]] = []
    esrgan.produce(job(scale=4), lambda done, total: steps.append((done, total)))
    assert steps[-1] == (6, 6) and len(steps) == 6  # 37x23 in tiles of 16
    assert esrgan.loaded()
    facts = esrgan.info()
    assert facts["kind"] == "upscaler" and facts["family"] == "esrgan"
    assert {k: facts[k] for k in ("tasks", "scales", "native_scale", "max_output_pixels", "device")} == {
        "tasks": ["upscale"], "scales": [2, 4, 8], "native_scale": 4, "max_output_pixels": 4096 * 4096, "device": "cpu"}
    assert facts["model_source"] == esrgan.model_source


def test_sd_upscaler_stores_a_4x_png_with_its_seed(sd_x4):
    sd_job = job(task="sd_upscale", image=noise_image(16, 12), prompt="a cat", num_inference_steps=2, seed=5)
    first = asyncio.run(sd_x4.run(sd_job))
    image = stored_png(sd_x4, first)
    assert image.size == (64, 48)
    assert first.meta == {"width": 64, "height": 48, "scale": 4, "seed": 5}
    again = asyncio.run(sd_x4.run(job(task="sd_upscale", image=noise_image(16, 12), prompt="a cat",
                                      num_inference_steps=2, seed=5, request_id="r-2")))
    assert np.array_equal(np.asarray(stored_png(sd_x4, again)), np.asarray(image))
    drawn = asyncio.run(sd_x4.run(job(task="sd_upscale", image=noise_image(16, 12), num_inference_steps=1,
                                      request_id="r-3")))
    assert 0 <= drawn.meta["seed"] <= 2**32 - 1


def test_sd_upscaler_refuses_scale_2_and_bad_seeds(sd_x4):
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(sd_x4.run(job(task="sd_upscale", scale=2)))
    assert info.value.field == "scale" and "allowed: one of 4" in info.value.message
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(sd_x4.run(job(task="sd_upscale", image=noise_image(8, 8), seed=-1)))
    assert info.value.field == "seed"
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(sd_x4.run(job(task="upscale")))
    assert info.value.field == "task"


def test_sd_upscaler_facts(sd_x4):
    facts = sd_x4.info()
    assert facts["kind"] == "sd_upscaler"
    assert (facts["tasks"], facts["scales"], facts["native_scale"]) == (["sd_upscale"], [4], 4)
    assert (facts["noise_level"], facts["max_noise_level"], facts["device"]) == (20, 350, "cpu")


def test_abandoned_upscales_stop_between_tiles_and_steps(esrgan, sd_x4, monkeypatch):
    """Serve cancels ``run`` mid-upscale: the ESRGAN stops after the tile under way, the SD x4
    upscaler after the denoising step under way; each call ends only once its thread has, nothing
    is stored, and the next job runs in full."""
    from tests.deployments.families.stopping import HeldStep, cancel_mid_job

    tiles = esrgan.upscaler.count_tiles(37, 23, 4)
    assert tiles >= 4  # 16-pixel tiles: several, so stopping after the second one shows
    for family, abandoned, following, total in (
        (esrgan, job(request_id="gone"), job(request_id="next"), tiles),
        (sd_x4, job(task="sd_upscale", request_id="gone", num_inference_steps=10, seed=1),
         job(task="sd_upscale", request_id="next", num_inference_steps=2, seed=1), 2),
    ):
        family.store.objects.clear()
        held = HeldStep(family, monkeypatch, hold_at=2)
        cancelled = asyncio.run(cancel_mid_job(family, family.run(abandoned), held))
        assert not cancelled.returned_while_held and not cancelled.lock_free_while_held, family.kind
        assert not cancelled.busy_when_returned and cancelled.steps == 2, family.kind
        assert family.store.objects == {}, family.kind
        asyncio.run(family.run(following))
        assert held.steps == 2 + total, family.kind
        monkeypatch.undo()
