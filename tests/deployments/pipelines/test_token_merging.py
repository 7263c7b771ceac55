"""Token merging really merges tokens, changes the output, and comes off cleanly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.errors import InvalidJobError
from deployments.pipelines.token_merging import is_patched, merged_tokens

# 128×128 → 16×16 latent; the tiny UNets' only attention is one downsample
# deep (8×8 = 64 tokens), so max_downsample=2 is needed for ToMe to touch it.
SIZE = 128


def _self_attention_tokens(pipe) -> tuple[list[int], list]:
    seen: list[int] = []
    handles = [
        block.attn1.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[1]))
        for block in pipe.unet.modules()
        if hasattr(block, "attn1")
    ]
    return seen, handles


def _run(pipe) -> np.ndarray:
    out = pipe(
        "a cat",
        num_inference_steps=2,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    )
    return np.asarray(out.images)


@pytest.mark.parametrize("fixture", ["sd_pipelines", "sdxl_pipelines"])
def test_merging_changes_the_computation_then_comes_off(request, fixture):
    pipe = request.getfixturevalue(fixture).text2img
    seen, handles = _self_attention_tokens(pipe)
    try:
        base = _run(pipe)
        base_tokens = set(seen)
        seen.clear()
        with merged_tokens(pipe, ratio=0.5, max_downsample=2):
            assert is_patched(pipe)
            merged = _run(pipe)
            merged_tokens_seen = set(seen)
            seen.clear()
            # deterministic: same seed, same merged image
            np.testing.assert_array_equal(_run(pipe), merged)
            seen.clear()
        assert not is_patched(pipe)
        after = _run(pipe)
        after_tokens = set(seen)
    finally:
        for handle in handles:
            handle.remove()
    assert base_tokens == {(SIZE // 16) ** 2}
    assert merged_tokens_seen == {(SIZE // 16) ** 2 // 2}  # ratio 0.5 halves the tokens
    assert np.abs(merged - base).max() > 1e-3
    np.testing.assert_array_equal(after, base)
    assert after_tokens == base_tokens


def test_patch_is_removed_on_exception(sd_pipelines):
    pipe = sd_pipelines.text2img
    with pytest.raises(KeyError), merged_tokens(pipe, max_downsample=2):
        assert is_patched(pipe)
        raise KeyError("boom")
    assert not is_patched(pipe)
    assert not pipe.unet._forward_pre_hooks  # tomesd's size hook is gone too


def test_nested_use_is_refused(sd_pipelines):
    pipe = sd_pipelines.text2img
    with merged_tokens(pipe):
        with pytest.raises(RuntimeError, match="already applied"), merged_tokens(sd_pipelines.img2img):
            pass  # same UNet
        assert is_patched(pipe)
    assert not is_patched(pipe)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 0.8])
def test_bad_ratio_is_invalid(sd_pipelines, ratio):
    with pytest.raises(InvalidJobError) as err, merged_tokens(sd_pipelines.text2img, ratio=ratio):
        pass
    assert err.value.field == "token_merging_ratio"
    assert not is_patched(sd_pipelines.text2img)
