"""The conditioned tasks and seed-002 options on a diffusion family replica (in process, tiny
models, built from serve_config.yaml's families): ControlNet with each preprocessor, Illusion
Diffusion, Image Variation, LoRA stacks, named VAEs, token merging, weighted prompts and the
safety checker — each shown to change the computation, and each refused where it cannot apply."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from deployments.errors import InvalidJobError
from deployments.families.diffusion import DiffusionFamily
from deployments.types import ImageJob
from ingress.wiring.registry import ServiceConfig
from tests.deployments.conftest import MemoryStore

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _config(models_dir: Path) -> ServiceConfig:
    args = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]
    args["models_dir"] = str(models_dir)
    return ServiceConfig.model_validate(args)


def _family(tiny_models, name: str) -> DiffusionFamily:
    config = _config(next(iter(tiny_models.values())).parent)
    tasks, controls = config.family_tasks(name)
    return DiffusionFamily(str(tiny_models[f"tiny-{name}"]), store=MemoryStore(), family=name, gpu="a100",
                           tasks=tasks, controls=controls,
                           components=config.families[name].components.resolve(config.models_path()))


@pytest.fixture(scope="module")
def sdxl(tiny_models):
    return _family(tiny_models, "sdxl")


@pytest.fixture(scope="module")
def sd15(tiny_models):
    return _family(tiny_models, "sd15")


def square(size=(128, 128)) -> Image.Image:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).rectangle((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), fill="black")
    return image


def job(**kw) -> ImageJob:
    base = dict(task="text2img", tenant="t", request_id="r", prompt="a cat", num_inference_steps=2, height=128,
                width=128, seed=1)
    base.update(kw)
    return ImageJob(**base)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def run(family, **kw):
    return family.model.generate(job(**kw))


def differs(a: Image.Image, b: Image.Image) -> bool:
    return bool(np.abs(pixels(a) - pixels(b)).max() > 0)


# -- ControlNet -----------------------------------------------------------------------


@pytest.mark.parametrize("control", ["canny", "depth", "openpose"])
def test_controlnet_derives_the_control_image_in_the_replica(sdxl, control):
    from deployments.pipelines.preprocessors import canny

    out = run(sdxl, task="controlnet", control=control, image=square(), strength=0.8, return_control_image=True)
    assert len(out.images) == 1 and len(out.extras) == 1
    assert out.images[0][0].size == out.extras[0].size == (128, 128)
    if control == "canny":  # the control image is exactly the preprocessor's answer
        assert not differs(out.extras[0], canny(square()))
    else:
        assert out.extras[0].mode == "RGB"


def test_controlnet_strength_is_the_conditioning_scale(sdxl):
    weak = run(sdxl, task="controlnet", control="canny", image=square(), strength=0.1).images[0][0]
    strong = run(sdxl, task="controlnet", control="canny", image=square(), strength=1.0).images[0][0]
    again = run(sdxl, task="controlnet", control="canny", image=square(), strength=1.0).images[0][0]
    assert differs(weak, strong) and not differs(strong, again)


def test_controlnet_outputs_and_meta_through_the_family(sdxl):
    result = asyncio.run(sdxl.run(job(task="controlnet", control="depth", image=square(), batch=2,
                                      return_control_image=True)))
    assert len(result.outputs) == 3 and result.meta["control_image"] is True and result.meta["seeds"] == [1, 2]
    assert result.outputs[-1].meta == {"control_image": True}
    assert not asyncio.run(sdxl.run(job(task="controlnet", control="depth", image=square()))).meta.get("control_image")


def test_a_control_the_replica_does_not_hold_is_refused(sdxl):
    with pytest.raises(InvalidJobError, match="app_id"):
        run(sdxl, task="controlnet", control="qrcode", image=square())


# -- Illusion and Variation ---------------------------------------------------------------


def test_illusion_uses_the_pattern_as_is_and_strength_changes_it(sd15):
    pattern = square()
    out = run(sd15, task="illusion", control="qrcode", image=pattern, strength=0.5, return_control_image=True)
    assert not differs(out.extras[0], pattern)
    low = run(sd15, task="illusion", control="qrcode", image=pattern, strength=0.0).images[0][0]
    assert differs(low, out.images[0][0])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_variation_follows_the_image_by_strength_and_leaves_the_base_intact(request, family):
    fam = request.getfixturevalue(family)
    before = run(fam, seed=5).images[0][0]
    a = run(fam, task="variation", image=square(), strength=0.2).images[0][0]
    b = run(fam, task="variation", image=square(), strength=0.9).images[0][0]
    assert differs(a, b)
    assert not differs(before, run(fam, seed=5).images[0][0])  # the adapter is detached after the call


# -- options ---------------------------------------------------------------------------------


def test_lora_stack_changes_the_output_by_strength_and_is_off_without_it(sd15):
    from deployments.pipelines.lora import load_stack

    base = run(sd15).images[0][0]
    stack = load_stack(sd15.model.pipelines.text2img, sd15.model.options.loras, ["tiny-ink", "tiny-clay"])
    try:
        half = sd15.model.generate(job(lora_model="tiny-ink,tiny-clay", lora_strength="0.5"), lora_stack=stack)
        full = sd15.model.generate(job(lora_model="tiny-clay, tiny-ink", lora_strength="1"), lora_stack=stack)
        assert differs(base, half.images[0][0]) and differs(half.images[0][0], full.images[0][0])
        assert not differs(base, run(sd15).images[0][0])  # a call without LoRAs runs the base weights
    finally:
        stack.unload()
    with pytest.raises(InvalidJobError, match="lora_model"):
        run(sd15, lora_model="no-such-lora")
    with pytest.raises(InvalidJobError, match="lora_strength"):
        run(sd15, lora_model="tiny-ink", lora_strength="1.5")


def test_named_vae_changes_the_decode_and_is_restored(sdxl):
    base = run(sdxl).images[0][0]
    assert differs(base, run(sdxl, vae="tiny-vae-alt").images[0][0])
    assert not differs(base, run(sdxl).images[0][0])
    with pytest.raises(InvalidJobError, match="vae"):
        run(sdxl, vae="nope")


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_token_merging_really_changes_the_computation(request, family):
    fam = request.getfixturevalue(family)
    base = run(fam).images[0][0]
    merged = run(fam, tomesd=True).images[0][0]
    assert differs(base, merged) and not differs(merged, run(fam, tomesd=True).images[0][0])
    assert not differs(base, run(fam).images[0][0])  # unpatched again


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_weighted_prompts_change_the_embeddings(request, family):
    fam = request.getfixturevalue(family)
    plain = run(fam, prompt="a cat").images[0][0]
    assert not differs(plain, run(fam, prompt="a (cat:1.0)").images[0][0])
    assert differs(plain, run(fam, prompt="a (cat:1.6)").images[0][0])
    assert differs(plain, run(fam, prompt="a [cat]").images[0][0])


@pytest.mark.parametrize("treatment", ["blur", "pixelate", "black", "sensitive_content_text"])
def test_safety_checker_treats_flagged_images_and_says_which(sd15, tiny_models, treatment, monkeypatch):
    from deployments.pipelines.safety import SafetyChecker

    plain = run(sd15).images[0][0]
    unflagged = run(sd15, safety_checker=True, safety_checker_type=treatment)
    assert unflagged.flagged == [False] and not differs(plain, unflagged.images[0][0])
    forced = SafetyChecker.load(tiny_models["tiny-safety-checker"], adjustment=5.0)  # every score above threshold
    monkeypatch.setattr(sd15.model.options, "safety", forced)
    flagged = run(sd15, safety_checker=True, safety_checker_type=treatment)
    assert flagged.flagged == [True] and not differs(flagged.images[0][0], SafetyChecker.treat(plain, treatment))
    assert differs(flagged.images[0][0], plain)
    result = asyncio.run(sd15.run(job(safety_checker=True, safety_checker_type=treatment)))
    assert result.meta["nsfw"] == [True]
    stored = Image.open(io.BytesIO(sd15.store.get(result.outputs[0].key)))
    assert not differs(stored, SafetyChecker.treat(plain, treatment))


def test_options_a_replica_cannot_honour_are_refused(sd15):
    sd15_options = sd15.model.options
    with pytest.raises(InvalidJobError, match="return_control_image"):
        run(sd15, return_control_image=True)
    with pytest.raises(InvalidJobError, match="safety_checker_type"):
        run(sd15, safety_checker=True, safety_checker_type="sepia")
    saved, sd15_options.safety = sd15_options.safety, None
    try:
        with pytest.raises(InvalidJobError, match="safety_checker"):
            run(sd15, safety_checker=True)
    finally:
        sd15_options.safety = saved


# -- the replica's own machinery around the options ----------------------------------------


def test_a_failure_while_preparing_a_job_is_the_models_not_the_stores(sd15, monkeypatch):
    """A LoRA file gone missing fails the job as a ModelError (sync) — it is not an
    object-store outage to retry."""
    from deployments.errors import ModelError

    async def broken(job):
        raise FileNotFoundError("tiny-ink.safetensors")

    monkeypatch.setattr(sd15, "prepare", broken)
    with pytest.raises(ModelError) as err:
        asyncio.run(sd15.run(job(lora_model="tiny-ink")))
    assert "FileNotFoundError" not in err.value.public and "incident" in err.value.public


def test_lora_loading_waits_for_a_generation_still_holding_the_model(sd15):
    """A cancelled request's thread may still be generating: a stack loads (or unloads) only
    once the model lock is free."""
    import threading

    from deployments.pipelines.lora import load_stack

    done = threading.Event()
    stacks = []

    def load():
        stacks.append(load_stack(sd15.model.pipelines.text2img, sd15.model.options.loras, ["tiny-sketch"],
                                 sd15._model_lock))
        done.set()

    with sd15._model_lock:  # a generation under way
        thread = threading.Thread(target=load)
        thread.start()
        assert not done.wait(1.0)
    assert done.wait(30)
    thread.join()
    stacks[0].unload()


def test_weighted_prompts_keep_a_tasks_default_negative_prompt(sd15, monkeypatch):
    import deployments.pipelines.prompt_weights as weights

    seen = []
    real = weights.encode_weighted
    monkeypatch.setattr(weights, "encode_weighted", lambda pipe, p, n, **kw: (seen.append(n), real(pipe, p, n, **kw))[1])
    run(sd15, task="illusion", control="qrcode", image=square(), prompt="a (castle:1.3)")
    assert seen == ["low quality"]


def test_two_conditioned_jobs_at_once_each_get_their_own_result(sdxl):
    """A ControlNet job and a variation job sent together: the replica runs one at a time
    (the handlers share the UNet), and each answer is what the job alone gives."""
    canny = job(task="controlnet", control="canny", image=square(), return_control_image=True, request_id="a")
    variation = job(task="variation", image=square(), strength=0.7, request_id="b")

    async def both():
        return await asyncio.gather(sdxl.run(canny), sdxl.run(variation))

    first, second = asyncio.run(both())
    assert len(first.outputs) == 2 and first.meta["control_image"] and len(second.outputs) == 1
    alone = run(sdxl, task="variation", image=square(), strength=0.7).images[0][0]
    stored = Image.open(io.BytesIO(sdxl.store.get(second.outputs[0].key)))
    assert not differs(stored, alone)
