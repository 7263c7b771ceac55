"""Weighted prompts: A1111 syntax parsed, compel weighting, diffusers-equal when unweighted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.errors import InvalidJobError
from deployments.pipelines.prompt_weights import (
    encode_weighted,
    has_weights,
    parse_weights,
)

BASES = ["sd_pipelines", "sdxl_pipelines"]


def _reference(pipe, prompt, negative, clip_skip=None):
    """diffusers' own encode_prompt, as a dict of the same kwargs."""
    out = pipe.encode_prompt(
        prompt=prompt,
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=negative,
        clip_skip=clip_skip,
    )
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    return dict(zip(names, out))


def test_parse_weights_a1111_syntax():
    assert parse_weights("a (cat:1.5) dog") == [("a ", 1.0), ("cat", 1.5), (" dog", 1.0)]
    assert parse_weights("(cat)") == [("cat", pytest.approx(1.1))]
    assert parse_weights("[cat]") == [("cat", pytest.approx(1 / 1.1))]
    assert parse_weights("((cat))") == [("cat", pytest.approx(1.21))]
    assert parse_weights("(a [b]:2)") == [("a ", 2.0), ("b", pytest.approx(2 / 1.1))]
    assert parse_weights(r"\(cat\) \[x\]") == [("(cat) [x]", 1.0)]
    assert parse_weights("(open") == [("open", pytest.approx(1.1))]  # unclosed: to the end
    assert parse_weights("a) b: c]") == [("a) b: c]", 1.0)]  # stray closers are text
    assert parse_weights("") == [("", 1.0)]


def test_has_weights():
    assert not has_weights("a photo of a cat, red: blue")
    assert not has_weights("")
    assert not has_weights(None)
    for prompt in ("(cat:1.0)", "(cat)", "[cat]", r"a \(b\)"):
        assert has_weights(prompt), prompt


@pytest.mark.parametrize("prompt", ["(cat:-1)", "(cat:1.2.3)", "(cat:.)"])
def test_bad_weight_is_invalid(sd_pipelines, prompt):
    with pytest.raises(InvalidJobError) as err:
        encode_weighted(sd_pipelines.text2img, "ok", prompt)
    assert err.value.field == "negative_prompt"


@pytest.mark.parametrize("fixture", BASES)
@pytest.mark.parametrize("clip_skip", [None, 1, 2])
def test_unit_weights_equal_diffusers_encoding(request, fixture, clip_skip):
    pipe = request.getfixturevalue(fixture).text2img
    ours = encode_weighted(pipe, "a (cat:1.0) on a (mat:1)", "ugly", clip_skip=clip_skip)
    ref = _reference(pipe, "a cat on a mat", "ugly", clip_skip)
    assert ours.keys() == {k for k, v in ref.items() if v is not None}
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, ref[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("fixture", BASES)
def test_clip_skip_changes_the_weighted_embedding(request, fixture):
    pipe = request.getfixturevalue(fixture).text2img
    plain = encode_weighted(pipe, "(cat:1.3)")["prompt_embeds"]
    skipped = encode_weighted(pipe, "(cat:1.3)", clip_skip=1)["prompt_embeds"]
    assert (plain - skipped).abs().max() > 1e-3


def test_sdxl_none_negative_is_zeros_like_diffusers(sdxl_pipelines):
    ours = encode_weighted(sdxl_pipelines.text2img, "(cat:1.2)", None)
    assert not ours["negative_prompt_embeds"].any()
    assert not ours["negative_pooled_prompt_embeds"].any()
    ref = _reference(sdxl_pipelines.text2img, "cat", None)
    # the pooled embedding comes from the text without the syntax
    torch.testing.assert_close(ours["pooled_prompt_embeds"], ref["pooled_prompt_embeds"])


@pytest.mark.parametrize("fixture", BASES)
def test_weights_move_the_embedding(request, fixture):
    pipe = request.getfixturevalue(fixture).text2img

    def embed(prompt):
        return encode_weighted(pipe, prompt, "ugly")["prompt_embeds"]

    plain = embed("a cat")
    up = embed("a (cat:1.5)")
    down = embed("a [cat]")
    further_down = embed("a (cat:0.5)")
    assert (up - plain).abs().max() > 1e-3
    # only the weighted tokens move when up-weighting (compel scales away from the empty prompt)
    torch.testing.assert_close(up[:, :2], plain[:, :2])
    dist_down = (down - plain).norm()
    assert 0 < dist_down < (further_down - plain).norm()
    torch.testing.assert_close(down, embed("a (cat:0.9090909090909091)"))


@pytest.mark.parametrize("fixture", BASES)
def test_long_prompts_are_chunked_and_padded_together(request, fixture):
    pipe = request.getfixturevalue(fixture).text2img
    ours = encode_weighted(pipe, "(cat:1.2) " + "dog " * 100, "ugly")
    assert ours["prompt_embeds"].shape[1] == 154
    assert ours["negative_prompt_embeds"].shape == ours["prompt_embeds"].shape


@pytest.mark.parametrize("fixture", BASES)
def test_generation_runs_with_weighted_kwargs(request, fixture):
    pipelines = request.getfixturevalue(fixture)

    def run(**kwargs):
        out = pipelines.text2img(
            num_inference_steps=2, height=64, width=64,
            generator=torch.Generator("cpu").manual_seed(3), output_type="np", **kwargs,
        )
        return np.asarray(out.images)

    weighted = run(**encode_weighted(pipelines.text2img, "a (cat:1.4) [dog]", "ugly"))
    plain = run(**encode_weighted(pipelines.text2img, "a cat dog", "ugly"))
    np.testing.assert_allclose(plain, run(prompt="a cat dog", negative_prompt="ugly"), atol=1e-5)
    assert weighted.shape == (1, 64, 64, 3) and np.isfinite(weighted).all()
    assert np.abs(weighted - plain).max() > 1e-4


def test_img2img_shares_the_encoders(sd_pipelines):
    from PIL import Image

    kwargs = encode_weighted(sd_pipelines.img2img, "a (cat:1.4)", "ugly")
    out = sd_pipelines.img2img(
        image=Image.new("RGB", (64, 64), (120, 30, 200)), strength=0.5, num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(3), output_type="np", **kwargs,
    )
    assert np.asarray(out.images).shape == (1, 64, 64, 3)
