from __future__ import annotations

import pytest

from deployments.loader import load_pipeline, resolve_dtype


@pytest.mark.parametrize("fixture", ["sd_pipelines", "sdxl_pipelines"])
def test_one_set_of_weights(request, fixture):
    pipes = request.getfixturevalue(fixture)
    t2i, i2i, inp = pipes.text2img, pipes.img2img, pipes.inpaint
    assert t2i.unet is i2i.unet is inp.unet
    assert t2i.vae is i2i.vae is inp.vae
    assert t2i.text_encoder is i2i.text_encoder is inp.text_encoder
    assert len({id(t2i), id(i2i), id(inp)}) == 3


def test_pipeline_classes(sd_pipelines, sdxl_pipelines):
    names = [type(p).__name__ for p in (sd_pipelines.text2img, sd_pipelines.img2img, sd_pipelines.inpaint)]
    assert names == ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"]
    names = [type(p).__name__ for p in (sdxl_pipelines.text2img, sdxl_pipelines.img2img, sdxl_pipelines.inpaint)]
    assert names == ["StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"]


def test_progress_bars_disabled(sd_pipelines):
    for pipe in (sd_pipelines.text2img, sd_pipelines.img2img, sd_pipelines.inpaint):
        assert pipe._progress_bar_config.get("disable") is True


def test_dtype_rules():
    import torch

    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda") is torch.float16
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("float8", "cpu")


def test_missing_local_directory_does_not_reach_a_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((OSError, ValueError)):
        load_pipeline(str(tmp_path / "nope"))


def test_clip_skip_shim_keeps_the_module_tree_sane(sd_pipelines):
    encoder = sd_pipelines.text2img.text_encoder
    assert encoder.text_model.final_layer_norm is not None  # what SD's clip_skip path needs
    names = [name for name, _ in encoder.named_modules()]  # no self-recursion
    assert len(names) == len(set(names)) < 200
