"""The upscaling families: an ESRGAN-family model through spandrel (kind ``upscaler``: 2x,
4x, 8x, tiled) and the Stable Diffusion x4 upscaler (kind ``sd_upscaler``: 4x, guided by a
prompt). Model code lives in ``deployments.pipelines.esrgan`` / ``sd_upscale``; these
deployments check the job, run it and package one PNG.

A job is refused (``InvalidJobError``, a 422 naming the field) before the model runs when it
has no image, when a side of the input exceeds ``max_side``, or when its ``scale`` is not
one the app makes or would make more than ``max_output_pixels`` output pixels
(``deployments.job_rules.check_upscale``, the same rule the ingress applies).
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image

from deployments.catalog import MAX_SEED
from deployments.errors import InvalidJobError
from deployments.families.base import STALL_SECONDS, FamilyBase, OnStep, Packaged
from deployments.job_rules import check_upscale
from deployments.types import UpscaleJob

if TYPE_CHECKING:
    from storage.base import ObjectStore
    from storage.settings import StorageSettings

logger = logging.getLogger("deployments.families.upscale")

MAX_SIDE = 1536
MAX_OUTPUT_PIXELS = 4096 * 4096


@dataclass
class Upscaled:
    """What one job produced: the image, its factor, and the seed (diffusion upscalers)."""

    image: Image.Image
    scale: int
    seed: int | None = None


def check_job(job: UpscaleJob, tasks: tuple[str, ...], scales: tuple[int, ...], max_side: int,
              max_output_pixels: int) -> Image.Image:
    """The job's input image, once the job is one this family can do."""
    if job.task not in tasks:
        raise InvalidJobError("task", f"this replica does not run {job.task!r}; it runs {', '.join(tasks)}")
    if job.image is None:
        raise InvalidJobError("image", f"{job.task} needs an input image")
    width, height = job.image.size
    if width > max_side or height > max_side:
        raise InvalidJobError("image", f"the image is {width}x{height}; allowed: sides of at most {max_side} pixels")
    check_upscale(width, height, job.scale, max_output_pixels, scales)
    return job.image


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _package(produced: Upscaled) -> tuple[list[Packaged], dict[str, Any]]:
    meta: dict[str, Any] = {"width": produced.image.width, "height": produced.image.height, "scale": produced.scale}
    if produced.seed is not None:
        meta["seed"] = produced.seed
    return [Packaged(encode_png(produced.image), "image/png", "png", dict(meta))], meta


def _log_loaded(kind: str, family: str, gpu: str, source: str, device: str, dtype: str, start: float) -> None:
    seconds = time.perf_counter() - start
    logger.info("model loaded kind=%s family=%s gpu=%s source=%s device=%s dtype=%s load_seconds=%.2f",
                kind, family, gpu, source, device, dtype, seconds,
                extra={"family": family, "gpu": gpu, "model_source": source, "kind": kind, "device": device,
                       "dtype": dtype, "load_seconds": round(seconds, 3)})


class _UpscaleFamily(FamilyBase[UpscaleJob]):
    """What both upscaler kinds share: one PNG per job, loaded once ``upscaler`` is set."""

    def package(self, job: UpscaleJob, produced: Upscaled) -> tuple[list[Packaged], dict[str, Any]]:
        return _package(produced)

    def loaded(self) -> bool:
        return getattr(self, "upscaler", None) is not None


class UpscalerFamily(_UpscaleFamily):
    """Serve deployment for an ESRGAN-family upscaler (spandrel): ``upscale`` at 2x, 4x or 8x."""

    kind = "upscaler"
    served_tasks: ClassVar[tuple[str, ...]] = ("upscale",)
    scales: ClassVar[tuple[int, ...]] = (2, 4, 8)

    def __init__(
        self,
        model_source: str,
        *,
        revision: str | None = None,  # accepted for the builder; a weights file has no revisions
        dtype: str = "auto",
        storage: StorageSettings | None = None,
        family: str = "",
        gpu: str = "",
        store: ObjectStore | None = None,
        max_side: int = MAX_SIDE,
        stall_seconds: float = STALL_SECONDS,
        max_output_pixels: int = MAX_OUTPUT_PIXELS,
        tile: int = 256,
        tile_overlap: int = 16,
    ):
        from deployments.pipelines.esrgan import load_upscaler

        super().__init__(family=family, gpu=gpu, storage=storage, store=store, stall_seconds=stall_seconds)
        self.model_source = model_source
        self.max_side = max_side
        self.max_output_pixels = max_output_pixels
        start = time.perf_counter()
        self.upscaler = load_upscaler(model_source, dtype=dtype, tile=tile, overlap=tile_overlap)
        _log_loaded(self.kind, family, gpu, model_source, self.upscaler.device,
                    str(self.upscaler.dtype).removeprefix("torch."), start)

    def produce(self, job: UpscaleJob, on_step: OnStep | None, prepared: Any = None) -> Upscaled:
        image = check_job(job, self.served_tasks, self.scales, self.max_side, self.max_output_pixels)
        return Upscaled(self.upscaler.upscale(image, job.scale, on_step), job.scale)

    def facts(self) -> dict[str, Any]:
        up = self.upscaler
        return {
            "tasks": list(self.served_tasks),
            "scales": list(self.scales),
            "native_scale": up.native_scale,
            "architecture": up.architecture,
            "max_output_pixels": self.max_output_pixels,
            "max_side": self.max_side,
            "tile": up.tile,
            "tile_overlap": up.overlap,
            "model_source": self.model_source,
            "device": up.device,
            "dtype": str(up.dtype).removeprefix("torch."),
        }


class SDUpscalerFamily(_UpscaleFamily):
    """Serve deployment for the Stable Diffusion x4 upscaler: ``sd_upscale`` at 4x, guided by the prompt.

    Seeds: a job without one gets a random seed in 0..MAX_SEED, returned in the meta so the
    output can be made again."""

    kind = "sd_upscaler"
    served_tasks: ClassVar[tuple[str, ...]] = ("sd_upscale",)
    scales: ClassVar[tuple[int, ...]] = (4,)

    def __init__(
        self,
        model_source: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        storage: StorageSettings | None = None,
        family: str = "",
        gpu: str = "",
        store: ObjectStore | None = None,
        max_side: int = MAX_SIDE,
        stall_seconds: float = STALL_SECONDS,
        max_output_pixels: int = MAX_OUTPUT_PIXELS,
        noise_level: int | None = None,
        tile: int | None = None,  # accepted so one registry row shape fits both kinds; unused (no tiling)
        tile_overlap: int | None = None,
    ):
        from deployments.pipelines.sd_upscale import DEFAULT_NOISE_LEVEL, load_sd_upscaler

        super().__init__(family=family, gpu=gpu, storage=storage, store=store, stall_seconds=stall_seconds)
        self.model_source = model_source
        self.max_side = max_side
        self.max_output_pixels = max_output_pixels
        start = time.perf_counter()
        self.upscaler = load_sd_upscaler(model_source, revision=revision, dtype=dtype)
        self.noise_level = DEFAULT_NOISE_LEVEL if noise_level is None else noise_level
        if not 0 <= self.noise_level <= self.upscaler.max_noise_level:
            raise ValueError(f"noise_level must be in 0..{self.upscaler.max_noise_level}, not {self.noise_level}")
        _log_loaded(self.kind, family, gpu, model_source, self.upscaler.device, self.upscaler.dtype, start)

    def produce(self, job: UpscaleJob, on_step: OnStep | None, prepared: Any = None) -> Upscaled:
        image = check_job(job, self.served_tasks, self.scales, self.max_side, self.max_output_pixels)
        if job.seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        elif not 0 <= job.seed <= MAX_SEED:
            raise InvalidJobError("seed", f"allowed: 0..{MAX_SEED} (got {job.seed})")
        else:
            seed = job.seed
        result = self.upscaler.upscale(
            image, prompt=job.prompt, negative_prompt=job.negative_prompt, seed=seed,
            num_inference_steps=job.num_inference_steps, guidance_scale=job.guidance_scale,
            noise_level=self.noise_level, on_step=on_step,
        )
        return Upscaled(result, job.scale, seed)

    def facts(self) -> dict[str, Any]:
        up = self.upscaler
        return {
            "tasks": list(self.served_tasks),
            "scales": list(self.scales),
            "native_scale": 4,
            "max_output_pixels": self.max_output_pixels,
            "max_side": self.max_side,
            "noise_level": self.noise_level,
            "max_noise_level": up.max_noise_level,
            "model_source": self.model_source,
            "device": up.device,
            "dtype": up.dtype,
        }
