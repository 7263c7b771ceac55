"""A tiny random-weight CompVis safety checker, for tests (no model hub).

``write_tiny_safety_checker(out_dir)`` writes ``out_dir/tiny-safety-checker``
in the layout of the real ``CompVis/stable-diffusion-safety-checker`` repository:
``config.json`` + ``model.safetensors`` (a diffusers
``StableDiffusionSafetyChecker`` over a 2-layer, 32-wide CLIP vision tower on
32×32 inputs) and ``preprocessor_config.json`` (a ``CLIPImageProcessor`` that
resizes and centre-crops to 32). Deterministic (``torch.manual_seed(0)``).

The 17 concept / 3 special-care embeddings are random; every threshold is 1.0,
so with adjustment 0 nothing is ever flagged (a cosine never exceeds 1) and with
adjustment > 2 everything is. **It judges nothing**: it exists so tests travel
the real load → preprocess → CLIP → score path.
"""

from __future__ import annotations

from pathlib import Path

NAME = "tiny-safety-checker"
IMAGE_SIZE = 32


def build_tiny_safety_checker():
    """``(StableDiffusionSafetyChecker, CLIPImageProcessorPil)`` with random weights."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessorPil

    tiny = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={**tiny, "vocab_size": 99, "max_position_embeddings": 77,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={**tiny, "image_size": IMAGE_SIZE, "patch_size": 8},
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        model.concept_embeds.copy_(torch.randn_like(model.concept_embeds))
        model.special_care_embeds.copy_(torch.randn_like(model.special_care_embeds))
        model.concept_embeds_weights.fill_(1.0)
        model.special_care_embeds_weights.fill_(1.0)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return model, processor


def write_tiny_safety_checker(out_dir: str | Path, *, force: bool = False) -> Path:
    """Write the tiny checker under ``out_dir``; return its directory (skipped if present)."""
    target = Path(out_dir) / NAME
    if (target / "config.json").is_file() and (target / "preprocessor_config.json").is_file() and not force:
        return target
    model, processor = build_tiny_safety_checker()
    model.save_pretrained(target, safe_serialization=True)
    processor.save_pretrained(target)
    return target
