"""Illusion Diffusion on a diffusion family (an SD-1.5-style base): ``image`` is the
pattern, used as is as the control image of a QR-code-monster-style ControlNet.

``strength`` 0..1 maps linearly onto the ControlNet's useful conditioning range,
``0.8 + 1.2 * strength`` (see ``deployments.pipelines.controlnet.illusion_conditioning_scale``);
the default prompt is the app's (``serve_config.yaml``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deployments.families.controlnet import ControlNetTask
from deployments.types import ImageJob

if TYPE_CHECKING:
    from PIL import Image


class IllusionTask(ControlNetTask):
    """A ControlNet task whose control image is the pattern and whose scale is remapped."""

    def control_image(self, job: ImageJob) -> Image.Image:
        return job.input_image().convert("RGB")

    def kwargs(self, job: ImageJob, control: Image.Image) -> dict[str, Any]:
        from deployments.pipelines.controlnet import illusion_call_kwargs

        kwargs = illusion_call_kwargs(control, job.strength)
        kwargs.pop("prompt")  # the job's prompt (the app's default when none was sent) is used
        if job.negative_prompt is not None:
            kwargs.pop("negative_prompt")
        return kwargs
