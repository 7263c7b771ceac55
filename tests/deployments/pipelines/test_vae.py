"""Named VAEs: the library, loading, and swapping per call on the tiny pipelines."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from deployments.errors import InvalidJobError
from deployments.pipelines.tiny_options import VAE_NAME, write_tiny_vae
from deployments.pipelines.vae import VaeLibrary, load_vae, swap_vae


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaes")
    write_tiny_vae(root)
    return root


@pytest.fixture(scope="module")
def pipes(tiny_models):
    from deployments.loader import load_pipeline

    return load_pipeline(str(tiny_models["tiny-sd15"]))


@pytest.fixture(scope="module")
def alt_vae(pipes, vae_dir):
    return load_vae(VaeLibrary(vae_dir).path(VAE_NAME), pipes.dtype, pipes.device)


def run(pipe, **kwargs) -> np.ndarray:
    return pipe(
        "a red cat", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(0), output_type="np", **kwargs,
    ).images


def test_library_names_and_parse(vae_dir):
    (vae_dir / "empty").mkdir()
    (vae_dir / "file.txt").write_text("x")
    library = VaeLibrary(vae_dir)
    assert library.names() == [VAE_NAME]
    assert library.parse(None) is None and library.parse(" ") is None
    assert library.parse(VAE_NAME) == VAE_NAME
    assert library.path(VAE_NAME) == vae_dir / VAE_NAME


@pytest.mark.parametrize("name", ["nope", "empty", "../vaes", "..", "/etc", f"{VAE_NAME}/..", "a b", 3])
def test_library_rejects_unknown_and_unsafe_names(vae_dir, name):
    with pytest.raises(InvalidJobError) as info:
        VaeLibrary(vae_dir).parse(name)
    assert info.value.field == "vae"


def test_tiny_vae_same_shape_other_weights(pipes, alt_vae):
    base = pipes.text2img.vae
    assert alt_vae.config.block_out_channels == base.config.block_out_channels
    assert alt_vae.config.latent_channels == base.config.latent_channels
    base_sd, alt_sd = base.state_dict(), alt_vae.state_dict()
    assert base_sd.keys() == alt_sd.keys()
    assert not torch.equal(base_sd["decoder.conv_out.weight"], alt_sd["decoder.conv_out.weight"])


def test_from_pipe_shares_the_module_not_the_attribute(pipes, alt_vae):
    t2i, i2i = pipes.text2img, pipes.img2img
    assert t2i.vae is i2i.vae is pipes.inpaint.vae
    with swap_vae([t2i], alt_vae):
        assert t2i.vae is alt_vae and i2i.vae is not alt_vae  # swapping one is not enough
    assert t2i.vae is i2i.vae


def test_swap_changes_output_and_restores(pipes, alt_vae):
    original = pipes.text2img.vae
    base = run(pipes.text2img)
    image = (base[0] * 255).astype(np.uint8)
    from PIL import Image

    init = Image.fromarray(image)
    base_i2i = run(pipes.img2img, image=init, strength=0.5)
    with swap_vae(pipes, alt_vae):
        assert all(p.vae is alt_vae for p in (pipes.text2img, pipes.img2img, pipes.inpaint))
        swapped = run(pipes.text2img)
        swapped_i2i = run(pipes.img2img, image=init, strength=0.5)
    assert np.abs(swapped - base).max() > 1e-2
    assert np.abs(swapped_i2i - base_i2i).max() > 1e-2
    assert all(p.vae is original for p in (pipes.text2img, pipes.img2img, pipes.inpaint))
    assert np.array_equal(run(pipes.text2img), base)


def test_swap_restores_on_exception(pipes, alt_vae):
    original = pipes.text2img.vae
    with pytest.raises(RuntimeError, match="boom"), swap_vae(pipes, alt_vae):
        assert pipes.inpaint.vae is alt_vae
        raise RuntimeError("boom")
    assert all(p.vae is original for p in (pipes.text2img, pipes.img2img, pipes.inpaint))


def test_swap_none_is_a_no_op(pipes):
    original = pipes.text2img.vae
    with swap_vae(pipes, None):
        assert pipes.text2img.vae is original


def test_incompatible_vae_is_refused(pipes, alt_vae):
    from diffusers import AutoencoderKL

    other = AutoencoderKL(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1, norm_num_groups=4,
    )
    with pytest.raises(ValueError, match="does not fit"), swap_vae(pipes, other):
        pass
    with pytest.raises(ValueError, match="float64"), swap_vae(pipes, copy.deepcopy(alt_vae).to(torch.float64)):
        pass
    assert pipes.text2img.vae is not other


def test_sdxl_swap(tiny_models, vae_dir):
    from deployments.loader import load_pipeline

    pipes = load_pipeline(str(tiny_models["tiny-sdxl"]))
    vae = load_vae(vae_dir / VAE_NAME, "float32", "cpu")
    base = run(pipes.text2img)
    with swap_vae(pipes, vae):
        swapped = run(pipes.text2img)
    assert np.abs(swapped - base).max() > 1e-2
    assert np.array_equal(run(pipes.text2img), base)
