"""ControlNet and Illusion pipelines over the tiny bases (random weights, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deployments.errors import InvalidJobError
from deployments.pipelines.controlnet import (
    ILLUSION_DEFAULT_PROMPT,
    controlnet_call_kwargs,
    controlnet_pipeline,
    illusion_call_kwargs,
    illusion_conditioning_scale,
    load_controlnet,
)
from deployments.pipelines.tiny_conditioned import (
    write_tiny_controlnet_sd15,
    write_tiny_controlnet_sdxl,
)

SHARED = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@pytest.fixture(scope="module")
def controlnet_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnets")
    return {
        "sd15": write_tiny_controlnet_sd15(root / "cn-sd15"),
        "sdxl": write_tiny_controlnet_sdxl(root / "cn-sdxl"),
    }


def _load(path):
    return load_controlnet(str(path), torch.float32, "cpu")


def _control_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _run(pipe, kwargs, seed=0):
    return pipe(
        prompt=kwargs.pop("prompt", "a cat"),
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    ).images


def test_tiny_controlnet_is_written_in_diffusers_layout(controlnet_dirs):
    for path in controlnet_dirs.values():
        assert (path / "config.json").is_file()
        assert (path / "diffusion_pytorch_model.safetensors").is_file()


def test_sdxl_controlnets_each_get_a_pipeline_over_the_same_base_modules(sdxl_pipelines, controlnet_dirs):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    base = sdxl_pipelines.text2img
    canny, depth = _load(controlnet_dirs["sdxl"]), _load(controlnet_dirs["sdxl"])
    assert isinstance(canny, ControlNetModel)
    pipes = [controlnet_pipeline(base, canny), controlnet_pipeline(base, depth)]
    assert pipes[0] is not pipes[1]
    for pipe, controlnet in zip(pipes, (canny, depth)):
        assert isinstance(pipe, StableDiffusionXLControlNetPipeline)
        assert pipe.controlnet is controlnet
        for name in (*SHARED, "text_encoder_2", "tokenizer_2"):
            assert getattr(pipe, name) is getattr(base, name), name
    assert not hasattr(base, "controlnet")


def test_sd15_controlnet_pipeline_shares_the_base(sd_pipelines, controlnet_dirs):
    from diffusers import StableDiffusionControlNetPipeline

    base = sd_pipelines.text2img
    pipe = controlnet_pipeline(base, _load(controlnet_dirs["sd15"]))
    assert isinstance(pipe, StableDiffusionControlNetPipeline)
    for name in SHARED:
        assert getattr(pipe, name) is getattr(base, name), name


def test_controlnet_for_another_base_is_rejected(sdxl_pipelines, controlnet_dirs):
    with pytest.raises(ValueError, match="cross_attention_dim"):
        controlnet_pipeline(sdxl_pipelines.text2img, _load(controlnet_dirs["sd15"]))


@pytest.mark.parametrize("kind, size", [("sd15", (64, 48)), ("sdxl", (96, 64))])
def test_output_has_the_control_image_size_and_scale_matters(
    kind, size, sd_pipelines, sdxl_pipelines, controlnet_dirs
):
    base = {"sd15": sd_pipelines, "sdxl": sdxl_pipelines}[kind].text2img
    pipe = controlnet_pipeline(base, _load(controlnet_dirs[kind]))
    control = _control_image(*size)

    full = _run(pipe, controlnet_call_kwargs(control, 1.0))
    again = _run(pipe, controlnet_call_kwargs(control, 1.0))
    off = _run(pipe, controlnet_call_kwargs(control, 0.0))
    other_image = _run(pipe, controlnet_call_kwargs(_control_image(*size, seed=1), 1.0))

    width, height = size
    assert full.shape == (1, height, width, 3)
    np.testing.assert_array_equal(full, again)  # deterministic, so differences below are real
    assert np.abs(full - off).max() > 1e-3  # the ControlNet is applied ...
    assert np.abs(full - other_image).max() > 1e-3  # ... and reads the control image


def test_call_kwargs_validate_client_input():
    kwargs = controlnet_call_kwargs(_control_image(64, 48), 0.5)
    assert (kwargs["height"], kwargs["width"], kwargs["controlnet_conditioning_scale"]) == (48, 64, 0.5)
    with pytest.raises(InvalidJobError) as err:
        controlnet_call_kwargs(_control_image(60, 48), 0.5)
    assert err.value.field == "image"
    with pytest.raises(InvalidJobError) as err:
        controlnet_call_kwargs(_control_image(64, 48), 1.5)
    assert err.value.field == "strength"


def test_illusion_strength_maps_onto_qr_monster_range():
    assert illusion_conditioning_scale(0.0) == pytest.approx(0.8)
    assert illusion_conditioning_scale(0.5) == pytest.approx(1.4)
    assert illusion_conditioning_scale(1.0) == pytest.approx(2.0)
    with pytest.raises(InvalidJobError):
        illusion_conditioning_scale(-0.1)


def test_illusion_generation_on_sd15(sd_pipelines, controlnet_dirs):
    pipe = controlnet_pipeline(sd_pipelines.text2img, _load(controlnet_dirs["sd15"]))
    pattern = Image.fromarray((np.indices((64, 64)).sum(0) % 16 < 8).astype(np.uint8) * 255).convert("L")
    kwargs = illusion_call_kwargs(pattern, 0.5)
    assert kwargs["prompt"] == ILLUSION_DEFAULT_PROMPT
    assert kwargs["image"].mode == "RGB"
    weak = _run(pipe, illusion_call_kwargs(pattern, 0.0))
    strong = _run(pipe, kwargs)
    assert strong.shape == (1, 64, 64, 3)
    assert np.abs(strong - weak).max() > 1e-3
