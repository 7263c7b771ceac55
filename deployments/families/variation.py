"""Image Variation on a diffusion family: IP-Adapter variations of ``image``, loaded with
diffusers' ``load_ip_adapter`` from the family's ``ip_adapter`` directory (image encoder and
adapter weights both from there). ``strength`` is the IP-Adapter scale (0..1).

The adapter is attached to the shared UNet only for the variation call (a loaded IP-Adapter
makes every other call on that UNet fail in diffusers 0.42), see
``deployments.pipelines.ip_adapter``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from deployments.errors import InvalidJobError
from deployments.types import ImageJob

if TYPE_CHECKING:
    from PIL import Image

    from deployments.loader import DiffusionPipelines


class VariationTask:
    def __init__(self, pipelines: DiffusionPipelines, components: dict[str, Any], controls: list[str]):
        from deployments.pipelines.ip_adapter import load_ip_adapter

        self.adapter = load_ip_adapter(pipelines.text2img, components["ip_adapter"])

    def all_pipelines(self) -> list[Any]:
        return [self.adapter.pipe]

    def check(self, job: ImageJob) -> None:
        if job.image is None:
            raise InvalidJobError("image", "variation needs an input image")
        if not 0.0 <= job.strength <= 1.0:
            raise InvalidJobError("strength", "strength must be in 0..1")

    @contextmanager
    def call(self, job: ImageJob) -> Iterator[tuple[Any, dict[str, Any], list[Image.Image]]]:
        from deployments.pipelines.ip_adapter import ip_adapter_scale

        image = job.input_image().convert("RGB")
        with self.adapter.attached() as pipe:
            pipe.set_ip_adapter_scale(ip_adapter_scale(job.strength))
            yield pipe, {"ip_adapter_image": image, "height": image.height, "width": image.width}, []
