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
