"""Rules a job must meet that depend on the model or on several fields: checked by the
family before it runs a job, and by the ingress before it accepts one (with the facts the
family reports), in the same words."""

from __future__ import annotations

from deployments.catalog import IMG2IMG_STRENGTH, TASKS
from deployments.errors import InvalidJobError


def check_strength(task: str, strength: float, steps: int) -> None:
    """Image-to-image and inpainting run ``int(steps × strength)`` denoising steps: at least one."""
    if task in TASKS and TASKS[task].strength == IMG2IMG_STRENGTH and int(steps * strength) < 1:
        raise InvalidJobError(
            "strength",
            f"strength × num_inference_steps must be at least 1 (got {strength:g} × {steps}); "
            "raise strength or num_inference_steps",
        )


def check_clip_skip(clip_skip: int | None, text_encoder_layers: int) -> None:
    """``clip_skip`` must leave at least one layer of the text encoder."""
    if clip_skip is not None and not 0 <= clip_skip < text_encoder_layers:
        raise InvalidJobError(
            "clip_skip",
            f"this model's text encoder has {text_encoder_layers} layers; allowed: 1..{text_encoder_layers - 1}",
        )


def check_upscale(width: int, height: int, scale: int, max_output_pixels: int,
                  scales: tuple[int, ...] = (2, 4, 8)) -> None:
    """An upscaling job's factor is one the app makes, and its output stays under the pixel cap."""
    if scale not in scales:
        raise InvalidJobError("scale", f"allowed: one of {', '.join(map(str, scales))} (got {scale})")
    out_w, out_h = width * scale, height * scale
    if out_w * out_h > max_output_pixels:
        raise InvalidJobError(
            "scale",
            f"a {width}x{height} image at {scale}x would be {out_w}x{out_h} = {out_w * out_h} pixels; allowed: at most "
            f"{max_output_pixels} output pixels; send a smaller image or a lower scale",
        )
