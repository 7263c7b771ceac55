"""The diffusion family: model code (no IO) and its Serve deployment on the family base.

* ``DiffusionModel`` turns an ``ImageJob`` into PIL images. It does no IO: the
  pipelines come in already loaded, inputs come in already fetched, outputs go
  back as images for the deployment to encode and store.
* ``DiffusionFamily`` is the Serve deployment: it loads weights through
  ``deployments.loader.load_pipeline`` and hands the model to ``FamilyBase``,
  which runs it off the event loop, one job at a time, and stores the PNGs.

Concurrency: the text2img/img2img/inpaint pipelines share one set of modules,
and a diffusers pipeline keeps per-call state on itself (``_guidance_scale``,
``_num_timesteps``, ``_interrupt``, and here the per-request scheduler), so a
replica runs ONE generation at a time (the base's locks; ``DiffusionModel`` also
holds its own so direct callers are safe). Queueing and backpressure beyond that
are Serve's job (``max_ongoing_requests`` / ``max_queued_requests``); scale by
adding replicas, not concurrency inside one.

Seeds: image ``i`` of a batch uses seed ``job.seed + i``. Without a seed, a base
seed is drawn with ``secrets`` so that every ``base + i`` stays in 0..MAX_SEED,
and returned per image, so any output can be reproduced by sending its seed
back. Noise is drawn from one CPU ``torch.Generator`` per image: the same seed
gives the same starting noise on any device.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from deployments.catalog import MAX_SEED, TASKS
from deployments.errors import InvalidJobError, JobError
from deployments.families.base import STALL_SECONDS, FamilyBase, OnStep, Packaged, model_error
from deployments.job_rules import check_clip_skip, check_strength
from deployments.schedulers import build_scheduler
from deployments.types import ImageJob

if TYPE_CHECKING:
    from PIL import Image

    from deployments.loader import DiffusionPipelines
    from storage.base import ObjectStore
    from storage.settings import StorageSettings

logger = logging.getLogger("deployments.families.diffusion")

DIFFUSION_TASKS = tuple(name for name, spec in TASKS.items() if spec.kind == "diffusion")
MAX_SIDE = 1536  # the contract's largest side; a family may set its own
MAX_BATCH = 8


class DiffusionModel:
    """Runs jobs on one set of loaded pipelines. No IO, one job at a time."""

    def __init__(self, pipelines: DiffusionPipelines, max_side: int = MAX_SIDE, max_batch: int = MAX_BATCH):
        self.pipelines = pipelines
        self.max_side = max_side
        self.max_batch = max_batch
        # Captured once: the pipelines' ``scheduler`` attribute is replaced per request.
        self.base_scheduler_config = dict(pipelines.text2img.scheduler.config)
        encoders = [pipelines.text2img.text_encoder]
        if getattr(pipelines.text2img, "text_encoder_2", None) is not None:
            encoders.append(pipelines.text2img.text_encoder_2)
        self.text_encoder_layers = min(e.config.num_hidden_layers for e in encoders if e is not None)
        self._lock = threading.Lock()

    # -- validation -------------------------------------------------------
    def _seeds(self, job: ImageJob) -> list[int]:
        if job.seed is None:
            base = secrets.randbelow(MAX_SEED + 1 - (job.batch - 1))
        else:
            base = job.seed
            if not 0 <= base <= MAX_SEED:
                raise InvalidJobError("seed", f"seed must be in 0..{MAX_SEED} (image i uses seed + i)")
        return [base + i for i in range(job.batch)]

    def _check(self, job: ImageJob) -> None:
        if job.task not in DIFFUSION_TASKS:
            raise InvalidJobError("task", f"unknown task {job.task!r}; use one of {', '.join(DIFFUSION_TASKS)}")
        if not 1 <= job.batch <= self.max_batch:
            raise InvalidJobError("batch", f"batch must be in 1..{self.max_batch}")
        if job.num_inference_steps < 1:
            raise InvalidJobError("num_inference_steps", "num_inference_steps must be at least 1")
        check_clip_skip(job.clip_skip, self.text_encoder_layers)
        if job.task in ("img2img", "inpaint"):
            if job.image is None:
                raise InvalidJobError("image", f"{job.task} needs an input image")
            if not 0.0 <= job.strength <= 1.0:
                raise InvalidJobError("strength", "strength must be in 0..1")
            check_strength(job.task, job.strength, job.num_inference_steps)
        if job.task == "inpaint" and job.mask is None:
            raise InvalidJobError("mask", "inpaint needs a mask image")
        if job.task == "text2img":
            factor = self.pipelines.vae_scale_factor
            for name in ("height", "width"):
                value = getattr(job, name)
                if value is not None and (value < factor or value % factor):
                    raise InvalidJobError(name, f"{name} must be a positive multiple of {factor}")
            width = job.width or self.pipelines.default_width
            height = job.height or self.pipelines.default_height
        else:
            width, height = job.image.size
        # Checked again here (the ingress sizes jobs first): a job is never larger than the family allows.
        for name, value in (("width", width), ("height", height)):
            if value > self.max_side:
                raise InvalidJobError(name, f"{name} {value} exceeds this model's limit; allowed: at most {self.max_side}")

    # -- generation -------------------------------------------------------
    def generate(self, job: ImageJob, *, on_step: OnStep | None = None) -> list[tuple[Image.Image, int]]:
        """Run ``job``; return ``[(image, seed), ...]``, one per batch item.

        Raises ``InvalidJobError`` for a job this model cannot do and
        ``ModelError`` when diffusers fails on a valid job. Blocking: call it
        from a worker thread, never on an event loop.
        """
        import torch
        from PIL import Image

        self._check(job)
        seeds = self._seeds(job)
        scheduler = build_scheduler(
            job.scheduler,
            self.base_scheduler_config,
            use_karras_sigmas=job.use_karras_sigmas,
            algorithm_type=job.algorithm_type,
        )
        pipe = self.pipelines.pipeline(job.task)
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "num_inference_steps": job.num_inference_steps,
            "guidance_scale": job.guidance_scale,
            "num_images_per_prompt": job.batch,
            "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds],
            "clip_skip": job.clip_skip,
            "output_type": "pil",
        }
        if job.task == "text2img":
            kwargs["height"] = job.height or self.pipelines.default_height
            kwargs["width"] = job.width or self.pipelines.default_width
        else:
            image = job.image.convert("RGB")
            kwargs["image"] = image
            kwargs["strength"] = job.strength
            if job.task == "inpaint":
                kwargs["mask_image"] = job.mask.convert("L").resize(image.size, Image.NEAREST)
                kwargs["height"] = image.height
                kwargs["width"] = image.width

        def _callback(p, step: int, timestep, callback_kwargs: dict) -> dict:
            if on_step is not None:
                on_step(step + 1, int(p.num_timesteps))
            return {}

        kwargs["callback_on_step_end"] = _callback
        kwargs["callback_on_step_end_tensor_inputs"] = []

        with self._lock:
            pipe.scheduler = scheduler  # per request; safe under the lock
            try:
                with torch.inference_mode():
                    images = pipe(**kwargs).images
            except JobError:
                raise
            except ValueError as exc:
                if "After adjusting the num_inference_steps by strength" in str(exc):
                    raise InvalidJobError(
                        "strength",
                        "strength * num_inference_steps must be at least 1; raise strength or "
                        "num_inference_steps",
                    ) from exc
                raise model_error(exc, job) from exc
            except Exception as exc:
                raise model_error(exc, job) from exc
        if len(images) != len(seeds):
            raise model_error(RuntimeError(f"pipeline returned {len(images)} images for a batch of {len(seeds)}"), job)
        return list(zip(images, seeds))


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class DiffusionFamily(FamilyBase):
    """Serve deployment for one diffusion model family on one GPU type."""

    kind = "diffusion"

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
    ):
        from deployments.loader import load_pipeline

        super().__init__(family=family, gpu=gpu, storage=storage, store=store, stall_seconds=stall_seconds)
        self.model_source = model_source
        start = time.perf_counter()
        pipelines = load_pipeline(model_source, revision=revision, dtype=dtype)
        load_seconds = time.perf_counter() - start
        self.model = DiffusionModel(pipelines, max_side=max_side)
        logger.info(
            "model loaded family=%s gpu=%s source=%s kind=%s device=%s dtype=%s load_seconds=%.2f",
            family, gpu, model_source, pipelines.kind, pipelines.device, pipelines.dtype, load_seconds,
            extra={"family": family, "gpu": gpu, "model_source": model_source, "kind": pipelines.kind,
                   "device": pipelines.device, "dtype": pipelines.dtype, "load_seconds": round(load_seconds, 3)},
        )

    def produce(self, job: ImageJob, on_step: OnStep | None) -> list[tuple[Image.Image, int]]:
        return self.model.generate(job, on_step=on_step)

    def package(self, job: ImageJob, produced: list[tuple[Image.Image, int]]) -> tuple[list[Packaged], dict[str, Any]]:
        files = [Packaged(encode_png(image), "image/png", "png", {"seed": seed, "width": image.width,
                                                                  "height": image.height})
                 for image, seed in produced]
        first = produced[0][0]
        return files, {"seeds": [seed for _, seed in produced], "width": first.width, "height": first.height}

    def loaded(self) -> bool:
        model = getattr(self, "model", None)
        return model is not None and getattr(model.pipelines.text2img, "unet", None) is not None

    def facts(self) -> dict[str, Any]:
        """What ``GET apps``-style callers and the ingress's pre-checks need."""
        from deployments.schedulers import scheduler_capabilities

        p = self.model.pipelines
        return {
            "pipeline": p.kind,
            "default_height": p.default_height,
            "default_width": p.default_width,
            "model_source": self.model_source,
            "device": p.device,
            "dtype": p.dtype,
            "default_scheduler": self.model.base_scheduler_config.get("_class_name"),
            "max_side": self.model.max_side,
            "schedulers": scheduler_capabilities(),
            "text_encoder_layers": self.model.text_encoder_layers,
        }
