"""Background work of the diffusion family that needs the background-removal family (called
by Serve handle, never imported: ``FamilyBase.call_helper("matting", "mask", image)``).

* Replace Background (``ReplaceBackgroundTask``): the subject mask comes from the matting
  family before generation; the base's inpainting pipeline repaints everything outside it
  (strength 1: the old background does not show through), and afterwards the subject's
  pixels are laid back over the result by the mask, so where the mask is solid the subject is
  exactly the input's (``compositing.keep_subject``); soft edges blend. A matting model's
  interior is rarely exactly 1 (0.99 leaks 1 % of the new picture into the subject), so the
  mask is hardened first: at least ``SOLID`` counts as subject, at most ``CLEAR`` as
  background, linear in between.
* Face Avatar's post-processing (``finish_avatar``): ``remove_background`` gives a transparent
  PNG; ``bg_color`` fills the removed background with that colour (with or without
  ``remove_background``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from deployments.errors import InvalidJobError
from deployments.types import ImageJob

if TYPE_CHECKING:
    from PIL import Image

    from deployments.families.diffusion import Generated
    from deployments.loader import DiffusionPipelines

CallHelper = Callable[..., Awaitable[Any]]
SOLID, CLEAR = 242, 13  # mask levels (of 255) taken as all subject / all background: 95 % and 5 %


def harden(mask: Image.Image) -> Image.Image:
    """``mask`` with levels at or above ``SOLID`` set to 255, at or below ``CLEAR`` to 0, linear between."""
    scale = 255 / (SOLID - CLEAR)
    return mask.convert("L").point(lambda v: 0 if v <= CLEAR else 255 if v >= SOLID else round((v - CLEAR) * scale))


async def subject_masks(images: list[Image.Image], call_helper: CallHelper) -> list[Image.Image]:
    """The subject mask ("L", same size) of each image, from the background-removal family."""
    return list(await asyncio.gather(*(call_helper("matting", "mask", image) for image in images)))


class ReplaceBackgroundTask:
    """Keep the subject, generate a new background from the prompt (inpainting outside the subject)."""

    def __init__(self, pipelines: DiffusionPipelines, components: dict[str, Any], controls: list[str]):
        self.pipelines = pipelines

    def all_pipelines(self) -> list[Any]:
        return []  # the base's own inpainting pipeline

    async def prepare(self, job: ImageJob, call_helper: CallHelper) -> None:
        """Ask the background-removal family for the subject mask; it becomes the job's ``mask``."""
        image = job.input_image().convert("RGB")
        (job.mask,) = await subject_masks([image], call_helper)

    def check(self, job: ImageJob) -> None:
        if job.image is None:
            raise InvalidJobError("image", "replace_background needs an input image")
        if job.mask is None:
            raise RuntimeError("the subject mask was not prepared")

    @contextmanager
    def call(self, job: ImageJob) -> Iterator[tuple[Any, dict[str, Any], list[Image.Image], dict[str, Any]]]:
        from PIL import ImageOps

        image = job.input_image().convert("RGB")
        subject = self._subject(job, image)
        coverage = sum(i * v for i, v in enumerate(subject.histogram())) / (255 * image.width * image.height)
        kwargs = {"image": image, "mask_image": ImageOps.invert(subject), "strength": 1.0,
                  "height": image.height, "width": image.width}
        yield self.pipelines.inpaint, kwargs, [], {"subject_coverage": round(coverage, 4)}

    def post(self, job: ImageJob, images: list[Image.Image]) -> list[Image.Image]:
        """The subject's own pixels over each generated image, by the mask."""
        from deployments.pipelines.compositing import keep_subject

        original = job.input_image().convert("RGB")
        subject = self._subject(job, original)
        return [keep_subject(original, generated.convert("RGB").resize(original.size), subject)
                for generated in images]

    @staticmethod
    def _subject(job: ImageJob, image: Image.Image) -> Image.Image:
        from PIL import Image as PILImage

        mask = job.input_image("mask").convert("L")
        return harden(mask if mask.size == image.size else mask.resize(image.size, PILImage.Resampling.BILINEAR))


async def finish_avatar(job: ImageJob, produced: Generated, call_helper: CallHelper) -> Generated:
    """Face Avatar's background: transparent (``remove_background``) or ``bg_color``; else as generated."""
    from deployments.pipelines.compositing import cutout, on_color, parse_hex_color

    if not (job.remove_background or job.bg_color):
        return produced
    color = parse_hex_color(job.bg_color) if job.bg_color else None
    images = [image.convert("RGB") for image, _ in produced.images]
    masks = await subject_masks(images, call_helper)
    done = await asyncio.to_thread(
        lambda: [on_color(i, m, color) if color is not None else cutout(i, m) for i, m in zip(images, masks)])
    produced.images = [(image, seed) for image, (_, seed) in zip(done, produced.images)]
    produced.meta["background"] = "transparent" if color is None else "#%02X%02X%02X" % color
    return produced
