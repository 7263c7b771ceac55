"""Image Variation through diffusers' IP-Adapter loader on the tiny bases (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from deployments.errors import InvalidJobError
from deployments.loader import load_pipeline
from deployments.pipelines.ip_adapter import (
    IP_ADAPTER_FILES,
    VARIATION_DEFAULT_PROMPT,
    load_ip_adapter,
)
from deployments.pipelines.tiny_conditioned import write_tiny_ip_adapter


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip-adapters")
    return {kind: write_tiny_ip_adapter(root / kind, base) for kind, base in (("sd", "sd15"), ("sdxl", "sdxl"))}


@pytest.fixture(scope="module")
def own_sd(tiny_models):
    """A private SD 1.5 load: these tests install adapters on its UNet."""
    return load_pipeline(str(tiny_models["tiny-sd15"]))


def _image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _t2i(pipe):
    return pipe(
        prompt="a cat", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images


def _vary(variation, strength, image_seed=0):
    return variation(
        _image(image_seed), strength, num_inference_steps=2, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


def _plain_unet(unet):
    from diffusers.models.attention_processor import AttnProcessor2_0

    return unet.encoder_hid_proj is None and all(
        type(p) is AttnProcessor2_0 for p in unet.attn_processors.values()
    )


def test_tiny_adapter_has_h94_layout_and_keys(adapter_dirs, own_sd):
    subfolder, weight_name = IP_ADAPTER_FILES["sd"]
    folder = adapter_dirs["sd"] / subfolder
    assert (folder / "image_encoder" / "config.json").is_file()
    assert (folder / "image_encoder" / "model.safetensors").is_file()
    with safe_open(str(folder / weight_name), framework="pt") as f:
        keys = set(f.keys())
    cross = [i for i, n in enumerate(own_sd.text2img.unet.attn_processors) if n.endswith("attn2.processor")]
    assert cross == [2 * k + 1 for k in range(len(cross))]  # diffusers' key_id 1, 3, 5, ...
    expected = {f"image_proj.{p}.{w}" for p in ("proj", "norm") for w in ("weight", "bias")}
    expected |= {f"ip_adapter.{i}.to_{kv}_ip.weight" for i in cross for kv in "kv"}
    assert keys == expected


def test_load_leaves_the_base_untouched(adapter_dirs, own_sd):
    from transformers import CLIPVisionModelWithProjection

    base = own_sd.text2img
    before = _t2i(base)
    variation = load_ip_adapter(base, str(adapter_dirs["sd"]))
    assert isinstance(variation.pipe.image_encoder, CLIPVisionModelWithProjection)
    assert variation.pipe.unet is base.unet and variation.pipe.vae is base.vae
    assert base.image_encoder is None
    assert _plain_unet(base.unet)
    assert variation.processors and variation.projection is not None
    np.testing.assert_array_equal(_t2i(base), before)


def test_variation_runs_scale_matters_and_text2img_still_works(adapter_dirs, own_sd):
    base = own_sd.text2img
    before = _t2i(base)
    variation = load_ip_adapter(base, str(adapter_dirs["sd"]))

    full = _vary(variation, 1.0)
    assert full.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(full, _vary(variation, 1.0))
    assert np.abs(full - _vary(variation, 0.3)).max() > 1e-3  # the scale is applied
    assert np.abs(full - _vary(variation, 1.0, image_seed=1)).max() > 1e-3  # the image is read

    assert _plain_unet(base.unet)
    np.testing.assert_array_equal(_t2i(base), before)  # text2img on the shared UNet unchanged
    out = own_sd.img2img(
        prompt="a cat", image=_image(2).resize((64, 64)), strength=0.5, num_inference_steps=2, output_type="np"
    ).images
    assert out.shape == (1, 64, 64, 3)


def test_adapter_is_detached_when_the_call_fails(adapter_dirs, own_sd):
    variation = load_ip_adapter(own_sd.text2img, str(adapter_dirs["sd"]))
    with pytest.raises(ValueError):
        variation(_image(0), 0.5, num_inference_steps=2, height=60, width=64)  # not a multiple of 8
    assert _plain_unet(own_sd.text2img.unet)
    with pytest.raises(InvalidJobError) as err:
        variation(_image(0), 1.5)
    assert err.value.field == "strength"


def test_default_prompt(adapter_dirs, own_sd, monkeypatch):
    variation = load_ip_adapter(own_sd.text2img, str(adapter_dirs["sd"]))
    seen = {}
    monkeypatch.setattr(type(variation.pipe), "__call__", lambda self, **kw: seen.update(kw))
    variation(_image(0), 0.5)
    assert seen["prompt"] == VARIATION_DEFAULT_PROMPT and seen["ip_adapter_image"] is not None


def test_sdxl_variation(adapter_dirs, tiny_models):
    pipes = load_pipeline(str(tiny_models["tiny-sdxl"]))
    variation = load_ip_adapter(pipes.text2img, str(adapter_dirs["sdxl"]))
    a, b = _vary(variation, 1.0), _vary(variation, 0.2)
    assert a.shape == (1, 128, 128, 3)
    assert np.abs(a - b).max() > 1e-3
    assert _t2i(pipes.text2img).shape == (1, 128, 128, 3)


def test_why_the_adapter_is_detached(adapter_dirs, tiny_models):
    """Guard: with diffusers' adapter left loaded, a call without an image prompt fails
    even at scale 0. If this ever passes, keeping the adapter attached becomes an option."""
    pipes = load_pipeline(str(tiny_models["tiny-sd15"]))
    subfolder, weight_name = IP_ADAPTER_FILES["sd"]
    pipes.text2img.load_ip_adapter(
        str(adapter_dirs["sd"]), subfolder=subfolder, weight_name=weight_name, local_files_only=True
    )
    pipes.text2img.set_ip_adapter_scale(0.0)
    with pytest.raises((TypeError, ValueError)):  # SD 1.5: TypeError; SDXL: ValueError
        _t2i(pipes.text2img)
