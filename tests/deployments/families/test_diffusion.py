from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from deployments.catalog import MAX_SEED
from deployments.errors import InvalidJobError, ModelError
from deployments.families.diffusion import DiffusionFamily
from deployments.schedulers import usable_scheduler_names
from deployments.types import ImageJob, Result


def job(task="text2img", **kw) -> ImageJob:
    defaults = dict(
        tenant="acme",
        request_id="req-1",
        prompt="a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
    )
    defaults.update(kw)
    return ImageJob(task=task, **defaults)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_close(a: Image.Image, b: Image.Image, tol: int = 2) -> None:
    """Same noise, maybe another batch size: equal up to float rounding."""
    assert a.size == b.size
    assert np.abs(pixels(a) - pixels(b)).max() <= tol


def input_image(size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(params=["sd_model", "sdxl_model"])
def model(request):
    return request.getfixturevalue(request.param)


# -- text2img ---------------------------------------------------------------


def test_batch_gives_images_of_requested_size_and_seeds(model):
    out = model.generate(job(batch=2, seed=42, height=64, width=128)).images
    assert len(out) == 2
    assert [seed for _, seed in out] == [42, 43]
    for image, _ in out:
        assert isinstance(image, Image.Image)
        assert image.size == (128, 64)


def test_same_seed_same_pixels_different_seed_different(model):
    a = model.generate(job(seed=7)).images[0][0]
    b = model.generate(job(seed=7)).images[0][0]
    c = model.generate(job(seed=8)).images[0][0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_batch_item_equals_single_run_with_its_seed(sd_model):
    batch = sd_model.generate(job(batch=2, seed=100)).images
    single = sd_model.generate(job(batch=1, seed=101)).images
    other = sd_model.generate(job(batch=1, seed=100)).images
    # same starting noise; batched kernels may differ by float rounding only
    assert_close(batch[1][0], single[0][0])
    assert np.abs(pixels(batch[1][0]) - pixels(other[0][0])).max() > 2


def test_random_seed_when_none(model):
    first = model.generate(job(batch=2, seed=None)).images
    second = model.generate(job(batch=2, seed=None)).images
    s1 = [s for _, s in first]
    s2 = [s for _, s in second]
    assert s1[1] == s1[0] + 1
    assert all(0 <= s <= MAX_SEED for s in s1 + s2)
    assert s1 != s2
    # a returned seed reproduces its image
    again = model.generate(job(batch=2, seed=s1[0])).images[0][0]
    assert np.array_equal(pixels(again), pixels(first[0][0]))
    assert_close(model.generate(job(seed=s1[1])).images[0][0], first[1][0])


def test_default_size_is_the_models(sd_model):
    image, _ = sd_model.generate(job(height=None, width=None)).images[0]
    p = sd_model.pipelines
    assert image.size == (p.default_width, p.default_height)


def test_negative_prompt_and_guidance_change_output(sd_model):
    base = pixels(sd_model.generate(job(seed=1)).images[0][0])
    neg = pixels(sd_model.generate(job(seed=1, negative_prompt="blurry")).images[0][0])
    assert not np.array_equal(base, neg)


def test_size_not_multiple_of_8_is_invalid(sd_model):
    with pytest.raises(InvalidJobError) as info:
        sd_model.generate(job(height=70))
    assert info.value.field == "height"


def test_on_step_reports_progress(sd_model):
    steps = []
    sd_model.generate(job(num_inference_steps=2, scheduler="EulerDiscreteScheduler"), on_step=lambda s, t: steps.append((s, t)))
    assert steps == [(1, 2), (2, 2)]
    steps.clear()  # the default PNDM (PLMS) runs one extra warm-up step: total says so
    sd_model.generate(job(num_inference_steps=2), on_step=lambda s, t: steps.append((s, t)))
    assert [s for s, _ in steps] == list(range(1, len(steps) + 1))
    assert all(t == len(steps) for _, t in steps)


# -- clip_skip ----------------------------------------------------------------


def test_clip_skip_in_range_changes_output(model):
    base = pixels(model.generate(job(seed=3)).images[0][0])
    skipped = pixels(model.generate(job(seed=3, clip_skip=1)).images[0][0])
    assert not np.array_equal(base, skipped)


def test_clip_skip_too_large(model):
    with pytest.raises(InvalidJobError) as info:
        model.generate(job(clip_skip=model.text_encoder_layers))
    assert info.value.field == "clip_skip"
    assert str(model.text_encoder_layers) in info.value.message


# -- img2img / inpaint ------------------------------------------------------------


def test_img2img_keeps_input_size(model):
    source = input_image((96, 64))
    out = model.generate(job("img2img", image=source, strength=0.5, batch=2, seed=5, height=None, width=None)).images
    assert [img.size for img, _ in out] == [(96, 64), (96, 64)]
    again = model.generate(job("img2img", image=source, strength=0.5, batch=1, seed=5, height=None, width=None)).images
    assert_close(again[0][0], out[0][0])


def test_img2img_needs_an_image(sd_model):
    with pytest.raises(InvalidJobError) as info:
        sd_model.generate(job("img2img", image=None))
    assert info.value.field == "image"


def test_img2img_strength_times_steps_below_one(sd_model):
    with pytest.raises(InvalidJobError) as info:
        sd_model.generate(job("img2img", image=input_image(), strength=0.3, num_inference_steps=2))
    assert info.value.field == "strength"
    assert "num_inference_steps" in info.value.message


def test_inpaint_with_mask(model):
    source = input_image((64, 96))
    mask = Image.new("1", (16, 24), 0)  # another size and mode: resized and converted
    mask.paste(1, (4, 4, 12, 20))
    out = model.generate(job("inpaint", image=source, mask=mask, strength=1.0, seed=9, height=None, width=None)).images
    assert out[0][0].size == (64, 96)


def test_inpaint_needs_a_mask(sd_model):
    with pytest.raises(InvalidJobError) as info:
        sd_model.generate(job("inpaint", image=input_image(), mask=None))
    assert info.value.field == "mask"


def test_inpaint_strength_rule(sdxl_model):
    with pytest.raises(InvalidJobError):
        sdxl_model.generate(
            job("inpaint", image=input_image(), mask=Image.new("L", (8, 8), 255), strength=0.1, num_inference_steps=4)
        )


# -- schedulers -------------------------------------------------------------------


@pytest.mark.parametrize("name", usable_scheduler_names())
def test_every_usable_scheduler_runs(sd_model, name):
    out = sd_model.generate(job(scheduler=name, seed=0)).images
    assert out[0][0].size == (64, 64)


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
@pytest.mark.parametrize("name", ["PNDMScheduler", "DPMSolverMultistepScheduler", "LCMScheduler"])
def test_schedulers_on_sdxl_image_tasks(sdxl_model, name, task):
    out = sdxl_model.generate(
        job(task, scheduler=name, image=input_image((64, 64)), mask=Image.new("L", (64, 64), 255), strength=1.0)
    ).images
    assert out[0][0].size == (64, 64)


def _scheduler_used(model, **kw):
    seen = []
    model.generate(job(scheduler="DPMSolverMultistepScheduler", num_inference_steps=6, **kw),
                   on_step=lambda step, total: seen.append(model.pipelines.text2img.scheduler))
    return seen[0]


def test_karras_and_algorithm_options_change_the_sampler(sd_model):
    import torch

    plain = _scheduler_used(sd_model)
    karras = _scheduler_used(sd_model, use_karras_sigmas=True)
    assert karras.config.use_karras_sigmas and not plain.config.use_karras_sigmas
    assert plain.sigmas.shape == karras.sigmas.shape
    assert not torch.allclose(plain.sigmas, karras.sigmas)  # the noise schedule itself changed
    assert [round(float(t)) for t in plain.timesteps] != [round(float(t)) for t in karras.timesteps]
    sde = _scheduler_used(sd_model, algorithm_type="sde-dpmsolver++")
    assert sde.config.algorithm_type == "sde-dpmsolver++" != plain.config.algorithm_type
    first = _scheduler_used(sd_model, algorithm_type="dpmsolver")
    assert first.config.algorithm_type == "dpmsolver"


def test_model_refuses_sizes_beyond_its_limit(sd_pipelines):
    from deployments.families.diffusion import DiffusionModel

    small = DiffusionModel(sd_pipelines, max_side=64)
    small.generate(job(height=64, width=64))  # the edge is fine
    with pytest.raises(InvalidJobError) as info:
        small.generate(job(height=64, width=128))
    assert info.value.field == "width" and "at most 64" in info.value.message
    with pytest.raises(InvalidJobError) as info:  # image-to-image: the input's size is the job's size
        small.generate(job("img2img", image=input_image((64, 128)), strength=0.5))
    assert info.value.field == "height"
    with pytest.raises(InvalidJobError):
        small.generate(job(batch=9))


def test_scheduler_errors_surface_as_invalid_job(sd_model):
    with pytest.raises(InvalidJobError) as info:
        sd_model.generate(job(scheduler="ScoreSdeVeScheduler"))
    assert info.value.field == "scheduler"


def test_each_request_gets_its_own_scheduler(sd_model):
    seen = []
    sd_model.generate(job(), on_step=lambda s, t: seen.append(id(sd_model.pipelines.text2img.scheduler)))
    sd_model.generate(job(), on_step=lambda s, t: seen.append(id(sd_model.pipelines.text2img.scheduler)))
    assert len(set(seen)) == 2
    # the default stays the model's own scheduler class
    assert sd_model.base_scheduler_config["_class_name"] == "PNDMScheduler"


def test_other_diffusers_errors_become_model_errors(sd_model, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory " + "x" * 1000)

    monkeypatch.setattr(sd_model.pipelines.text2img.unet, "forward", boom)
    with pytest.raises(ModelError) as info:
        sd_model.generate(job())
    assert len(str(info.value)) <= 200


# -- the deployment class -------------------------------------------------------------


@pytest.fixture(scope="module")
def family_factory(tiny_models):
    def make(store, source="tiny-sd15"):
        return DiffusionFamily(str(tiny_models[source]), store=store, family="sd15", gpu="a10g")

    return make


def test_family_run_uploads_pngs_under_tenant_keys(family_factory, memory_store):
    family = family_factory(memory_store)
    result = asyncio.run(family.run(job(batch=2, seed=11, tenant="acme", request_id="r-42", return_bytes=True)))
    assert isinstance(result, Result)
    assert result.run_seconds > 0
    keys = [img.key for img in result.outputs]
    assert keys == ["tenants/acme/images/r-42/0.png", "tenants/acme/images/r-42/1.png"]
    assert [img.meta["seed"] for img in result.outputs] == [11, 12] == result.meta["seeds"]
    assert (result.meta["width"], result.meta["height"]) == (64, 64)
    for img in result.outputs:
        data, content_type = memory_store.objects[img.key]
        assert content_type == "image/png" == img.content_type
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert img.data == data
        decoded = Image.open(io.BytesIO(data))
        assert decoded.size == (img.meta["width"], img.meta["height"]) == (64, 64)


def test_family_run_without_bytes(family_factory, memory_store):
    family = family_factory(memory_store)
    result = asyncio.run(family.run(job(seed=1, tenant="other", request_id="r1")))
    assert result.outputs[0].data is None
    assert list(memory_store.objects) == ["tenants/other/images/r1/0.png"]


def test_family_run_serializes_concurrent_jobs(family_factory, memory_store):
    family = family_factory(memory_store, "tiny-sdxl")

    async def both():
        return await asyncio.gather(
            family.run(job(seed=1, request_id="a")), family.run(job(seed=1, request_id="b"))
        )

    a, b = asyncio.run(both())
    pa = memory_store.objects[a.outputs[0].key][0]
    pb = memory_store.objects[b.outputs[0].key][0]
    assert pa == pb  # same seed, same bytes, no cross-talk between concurrent runs


def test_family_invalid_job_propagates(family_factory, memory_store):
    family = family_factory(memory_store)
    with pytest.raises(InvalidJobError):
        asyncio.run(family.run(job(clip_skip=99)))
    assert memory_store.objects == {}


def test_family_health_and_info(family_factory, memory_store):
    family = family_factory(memory_store, "tiny-sdxl")
    asyncio.run(family.check_health())
    info = family.info()
    assert info["kind"] == "diffusion" and info["pipeline"] == "sdxl"
    assert info["default_height"] == info["default_width"] == 128
    assert info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["model_source"].endswith("tiny-sdxl")
    family.model = None
    with pytest.raises(RuntimeError):
        asyncio.run(family.check_health())


def test_family_opens_store_from_settings(tiny_models, tmp_path):
    from storage.settings import StorageSettings

    family = DiffusionFamily(
        str(tiny_models["tiny-sd15"]),
        storage=StorageSettings(backend="local", local_root=tmp_path / "objects", signing_secret="s"),
    )
    result = asyncio.run(family.run(job(seed=2, tenant="acme", request_id="r9")))
    assert family.store.get(result.outputs[0].key).startswith(b"\x89PNG")


def test_health_fails_when_a_generation_stops_making_progress(family_factory, memory_store):
    import time

    family = family_factory(memory_store)
    family.stall_seconds = 5
    steps = []
    family._produce(job(num_inference_steps=3), on_step=lambda s, t: steps.append(family.clock.stalled_for()))
    assert len(steps) >= 3 and family.clock.busy_since is None  # progress is tracked, and idle afterwards
    asyncio.run(family.check_health())
    family.clock.busy_since = family.clock.last_step = time.monotonic() - 10  # a job hung inside a step
    try:
        with pytest.raises(RuntimeError, match="no step for"):
            asyncio.run(family.check_health())
    finally:
        family.clock.busy_since = None


def test_an_abandoned_generation_stops_at_its_next_step_without_decoding(family_factory, memory_store, monkeypatch):
    """Serve cancels ``run`` mid-generation (client gone): diffusers leaves its denoising loop at the
    step under way (the callback raises), the VAE never decodes, nothing is stored, the call ends only
    once the thread has, and the same pipelines then serve the next job in full."""
    from tests.deployments.families.stopping import HeldStep, cancel_mid_job

    family = family_factory(memory_store)
    vae = family.model.pipelines.text2img.vae
    decodes = []
    real_decode = vae.decode
    monkeypatch.setattr(vae, "decode", lambda *a, **kw: decodes.append(1) or real_decode(*a, **kw))
    held = HeldStep(family, monkeypatch, hold_at=2)
    cancelled = asyncio.run(cancel_mid_job(family, family.run(job(num_inference_steps=20, request_id="gone")), held))
    assert not cancelled.returned_while_held and not cancelled.lock_free_while_held
    assert not cancelled.busy_when_returned
    assert cancelled.steps == 2 and decodes == [] and memory_store.objects == {}
    result = asyncio.run(family.run(job(num_inference_steps=3, seed=5, request_id="next")))
    assert held.steps - 2 >= 3 and decodes == [1] and result.meta["seeds"] == [5]  # (PNDM adds a warm-up step)
