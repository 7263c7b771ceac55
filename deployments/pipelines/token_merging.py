"""Token merging (ToMe for Stable Diffusion, the ``tomesd`` package) for one call.

``tomesd.apply_patch`` swaps the class of every ``BasicTransformerBlock`` in the
UNet for a subclass whose forward merges similar tokens before self-attention
and unmerges after; ``tomesd.remove_patch`` swaps them back. Checked against
diffusers 0.42.1: the SD 1.5 / SDXL blocks (``norm_type="layer_norm"``) run
through tomesd 0.1.3's diffusers forward unchanged, on both tiny bases.

Two choices, both deliberate:

* ``use_rand=False``. tomesd's default picks the merge destinations with a
  generator forked from torch's *global* RNG state, so the same job seed gave a
  different image depending on what ran before (measured: max pixel diff 0.03 on
  the tiny SD 1.5). Without it the destination is always the top-left token of
  each 2×2 cell: same seed, same image.
* The patch is on the UNet, which text2img/img2img/inpaint share: the caller
  must hold the pipelines' lock for the whole ``with`` block. A UNet that is
  already patched raises instead of being silently re-patched.

ToMe only touches layers downsampled at most ``max_downsample`` times from the
latent (real SD 1.5 has attention at 1, 2 and 4; tomesd recommends 1 or 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from deployments.errors import InvalidJobError

MAX_RATIO = 0.75  # 1 - 1/(sx*sy) with tomesd's 2×2 destination stride
MAX_DOWNSAMPLES = (1, 2, 4, 8)


def is_patched(pipe: Any) -> bool:
    """True if any transformer block of ``pipe.unet`` is a tomesd block."""
    return any(type(m).__name__ == "ToMeBlock" for m in pipe.unet.modules())


def check_ratio(ratio: float, field: str = "token_merging_ratio") -> None:
    """``ratio`` is the fraction of tokens merged away: ``0 < ratio <= 0.75``."""
    if not 0.0 < ratio <= MAX_RATIO:
        raise InvalidJobError(field, f"token merging ratio must be in (0, {MAX_RATIO}] (got {ratio:g})")


@contextmanager
def merged_tokens(pipe: Any, ratio: float = 0.5, *, max_downsample: int = 1) -> Iterator[Any]:
    """Apply ToMe to ``pipe``'s UNet inside the ``with`` block; always remove it after."""
    import tomesd

    check_ratio(ratio)
    if max_downsample not in MAX_DOWNSAMPLES:
        raise ValueError(f"max_downsample must be one of {MAX_DOWNSAMPLES} (got {max_downsample})")
    if is_patched(pipe):
        raise RuntimeError("token merging is already applied to this UNet (concurrent or nested use)")
    tomesd.apply_patch(pipe, ratio=ratio, max_downsample=max_downsample, use_rand=False)
    try:
        yield pipe
    finally:
        tomesd.remove_patch(pipe)
