"""The diffusion family: model code (no IO) and its Ray Serve deployment class.

Two layers:

* ``DiffusionModel`` turns an ``ImageJob`` into PIL images. It does no IO: the
  pipelines come in already loaded, inputs come in already fetched, outputs go
  back as images for the caller to encode and store.
* ``DiffusionFamily`` is the Serve deployment (a plain class; the builder binds
  it with ``serve.deployment(DiffusionFamily, **options).bind(...)``). It loads
  weights through ``deployments.loader.load_pipeline``, runs the model off the
  event loop, encodes PNGs and uploads them to the object store.

Concurrency: the text2img/img2img/inpaint pipelines share one set of modules,
and a diffusers pipeline keeps per-call state on itself (``_guidance_scale``,
``_num_timesteps``, ``_interrupt``, and here the per-request scheduler), so a
replica runs ONE generation at a time. ``DiffusionFamily.run`` waits on an
``asyncio.Lock`` (waiting requests cost no thread) and ``DiffusionModel`` also
holds a ``threading.Lock`` so direct callers, and a thread left running after
its request was cancelled, are safe too. Queueing and backpressure beyond that
are Serve's job (``max_ongoing_requests`` / ``max_queued_requests``); scale by
adding replicas, not concurrency inside one.

Seeds: image ``i`` of a batch uses seed ``job.seed + i``. Without a seed, a base
seed is drawn with ``secrets`` in 0..2**32-1 (so that every ``base + i`` stays in
that range) and returned per image, so any output can be reproduced by sending
its seed back. Noise is drawn from one CPU ``torch.Generator`` per image: the
same seed gives the same starting noise on any device.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from deployments.errors import InvalidJobError, JobError, ModelError, TaskStopped, new_incident
from deployments.job_rules import check_clip_skip, check_strength
from deployments.schedulers import build_scheduler
from deployments.types import JOB_IMAGES, GeneratedImage, ImageJob, ImageResult, TaskRef, job_from_payload

if TYPE_CHECKING:
    from PIL import Image

    from deployments.loader import DiffusionPipelines
    from storage.base import ObjectStore
    from storage.settings import StorageSettings

logger = logging.getLogger("deployments.diffusion")

MAX_SEED = 2**32 - 1
TASKS = ("text2img", "img2img", "inpaint")
MAX_SIDE = 1536  # the contract's largest side; a family may set its own
MAX_BATCH = 8
STALL_SECONDS = 300.0  # a generation without a finished step for this long fails the health check
OnStep = Callable[[int, int], None]


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _model_error(exc: BaseException, job: ImageJob) -> ModelError:
    """Log the failure with a new incident id; the error carries only the id to clients."""
    incident = new_incident()
    logger.error("generation failed (incident %s)", incident, exc_info=exc,
                 extra={"task": job.task, "request_id": job.request_id, "incident": incident})
    return ModelError(_short(exc), incident)


class DiffusionModel:
    """Runs jobs on one set of loaded pipelines. No IO, one job at a time."""

    def __init__(self, pipelines: DiffusionPipelines, max_side: int = MAX_SIDE, max_batch: int = MAX_BATCH):
        self.pipelines = pipelines
        self.max_side = max_side
        self.max_batch = max_batch
        # Progress of the generation under way, for the health check: monotonic times.
        self.busy_since: float | None = None
        self.last_progress = 0.0
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
            if base < 0 or base + job.batch - 1 > 2**64 - 1:
                raise InvalidJobError("seed", "seed must be in 0..2**64-1 (image i uses seed + i)")
        return [base + i for i in range(job.batch)]

    def _check(self, job: ImageJob) -> None:
        if job.task not in TASKS:
            raise InvalidJobError("task", f"unknown task {job.task!r}; use one of {', '.join(TASKS)}")
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
            self.last_progress = time.monotonic()
            if on_step is not None:
                on_step(step + 1, int(p.num_timesteps))
            return {}

        kwargs["callback_on_step_end"] = _callback
        kwargs["callback_on_step_end_tensor_inputs"] = []

        with self._lock:
            pipe.scheduler = scheduler  # per request; safe under the lock
            self.last_progress = time.monotonic()  # first: a health check in between must see it fresh
            self.busy_since = self.last_progress
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
                raise _model_error(exc, job) from exc
            except Exception as exc:
                raise _model_error(exc, job) from exc
            finally:
                self.busy_since = None
        if len(images) != len(seeds):
            raise _model_error(RuntimeError(f"pipeline returned {len(images)} images for a batch of {len(seeds)}"), job)
        return list(zip(images, seeds))

    def stalled_for(self) -> float:
        """Seconds the generation under way has gone without finishing a step (0 when idle)."""
        return 0.0 if self.busy_since is None else time.monotonic() - self.last_progress


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _replica_id() -> str:
    """This Serve replica's id (a random id outside Serve)."""
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return "local-" + secrets.token_hex(4)


class _Metrics:
    """A few Serve metrics; a no-op if ``ray.serve.metrics`` is unavailable."""

    def __init__(self) -> None:
        self.seconds = self.images = None
        try:
            from ray.serve import metrics

            self.seconds = metrics.Histogram(
                "studio_diffusion_generation_seconds",
                description="Seconds spent generating one job (model time, without upload).",
                boundaries=[0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80],
                tag_keys=("task",),
            )
            self.images = metrics.Counter(
                "studio_diffusion_images_total",
                description="Images generated.",
                tag_keys=("task",),
            )
        except Exception:  # pragma: no cover - metrics are best effort
            logger.debug("ray.serve.metrics unavailable; metrics disabled", exc_info=True)

    def record(self, task: str, seconds: float, images: int) -> None:
        try:
            if self.seconds is not None:
                self.seconds.observe(seconds, tags={"task": task})
            if self.images is not None:
                self.images.inc(images, tags={"task": task})
        except Exception:  # pragma: no cover
            logger.debug("metric update failed", exc_info=True)


class DiffusionFamily:
    """Serve deployment for one diffusion model family on one GPU type.

    Plain class on purpose: ``ingress.builder`` applies ``serve.deployment`` with
    options from config. ``store`` lets tests (or an embedding caller) inject an
    object store instead of opening one from ``storage``.
    """

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
        from deployments.replica_net import bind_replica_grpc_to_node_ip

        bind_replica_grpc_to_node_ip()
        self.model_source = model_source
        self.family = family
        self.gpu = gpu
        self.stall_seconds = stall_seconds
        start = time.perf_counter()
        pipelines = load_pipeline(model_source, revision=revision, dtype=dtype)
        load_seconds = time.perf_counter() - start
        self.model = DiffusionModel(pipelines, max_side=max_side)
        if store is None:
            from storage.factory import open_store

            store = open_store(storage, signing=False)  # families store objects; they never sign URLs
        self.store = store
        from storage.tasks import TaskStore

        self.tasks = TaskStore(store)
        self.owner = _replica_id()
        self._lock = asyncio.Lock()
        self._metrics = _Metrics()
        logger.info(
            "model loaded family=%s gpu=%s source=%s kind=%s device=%s dtype=%s load_seconds=%.2f",
            family, gpu, model_source, pipelines.kind, pipelines.device, pipelines.dtype, load_seconds,
            extra={
                "family": family,
                "gpu": gpu,
                "model_source": model_source,
                "kind": pipelines.kind,
                "device": pipelines.device,
                "dtype": pipelines.dtype,
                "load_seconds": round(load_seconds, 3),
            },
        )

    def _store_images(self, job: ImageJob, outputs: list[tuple[Image.Image, int]]) -> list[GeneratedImage]:
        from storage.keys import image_key

        results = []
        for index, (image, seed) in enumerate(outputs):
            data = encode_png(image)
            key = image_key(job.tenant, job.request_id, index, attempt=job.attempt)
            self.store.put(key, data, "image/png")
            results.append(
                GeneratedImage(
                    key=key,
                    seed=seed,
                    width=image.width,
                    height=image.height,
                    content_type="image/png",
                    data=data if job.return_bytes else None,
                )
            )
        return results

    async def run(self, job: ImageJob) -> ImageResult:
        """Generate ``job``, store its PNGs under the tenant, return where they are."""
        start = time.perf_counter()
        async with self._lock:
            gen_start = time.perf_counter()
            outputs = await asyncio.to_thread(self.model.generate, job)
            gen_seconds = time.perf_counter() - gen_start
        images = await asyncio.to_thread(self._store_images, job, outputs)
        run_seconds = time.perf_counter() - start
        self._metrics.record(job.task, gen_seconds, len(images))
        logger.info(
            "job done request_id=%s task=%s images=%d generation_seconds=%.3f run_seconds=%.3f",
            job.request_id, job.task, len(images), gen_seconds, run_seconds,
            extra={
                "request_id": job.request_id,
                "tenant": job.tenant,
                "task": job.task,
                "images": len(images),
                "generation_seconds": round(gen_seconds, 4),
                "run_seconds": round(run_seconds, 4),
            },
        )
        return ImageResult(images=images, run_seconds=run_seconds)

    async def run_task(self, ref: TaskRef) -> str:
        """Run one attempt of an async task; the outcome goes to the task record.

        Claims the attempt, loads the job captured at submit from the store, runs
        it under a lease, and publishes the outputs (stored under per-attempt keys)
        in the final compare-and-swap. Returns what happened: the status this
        worker wrote, ``"skipped"`` (not ours to run), ``"superseded"``/``"lost"``
        (another attempt owns the task now), or ``"retry"`` (the object store
        failed under us for a reason that may pass: the task is handed back, after
        a backoff, for another attempt). Anything else that fails — the job, or the
        worker's own code — ends the task as FAILURE with its reason, without a retry.
        """
        from deployments.tasks import TaskLease
        from storage.base import is_transient

        lease = TaskLease(self.tasks, ref, self.owner)
        try:
            if not await asyncio.to_thread(lease.claim):
                return "skipped"
        except Exception as exc:
            if not is_transient(exc):
                raise
            logger.warning("task %s: could not claim attempt %d; its dispatch lease decides", ref.task_id,
                           ref.attempt, exc_info=True)
            return "retry"
        lease.start()
        try:
            return await self._run_claimed(ref, lease)
        except asyncio.CancelledError:
            lease.stop_reason = lease.stop_reason or "lost"  # the thread stops at its next step
            raise
        except Exception as exc:
            incident = new_incident()
            if is_transient(exc):
                logger.error("task %s attempt %d: the object store failed (incident %s)", ref.task_id, ref.attempt,
                             incident, exc_info=exc)
                await asyncio.to_thread(lease.give_up, f"attempt {ref.attempt} could not reach the object store "
                                                       f"(incident {incident}); retrying")
                return "retry"
            logger.error("task %s attempt %d failed in the worker (incident %s)", ref.task_id, ref.attempt, incident,
                         exc_info=exc)
            await asyncio.to_thread(lease.fail, "InternalError", f"the task failed on its worker (incident {incident})")
            return "FAILURE"
        finally:
            lease.stop()

    async def _run_claimed(self, ref: TaskRef, lease) -> str:
        images: list[GeneratedImage] = []
        job = await asyncio.to_thread(self._load_job, lease.record, ref.attempt)
        if job is None:
            incident = new_incident()
            logger.error("task %s: its payload is missing (incident %s)", ref.task_id, incident)
            await asyncio.to_thread(lease.fail, "InternalError", f"the task's input is gone (incident {incident})")
            return "FAILURE"
        try:
            async with self._lock:
                lease.check()
                outputs = await asyncio.to_thread(self._generate_for_task, job, lease)
            lease.check()
        except TaskStopped:
            await asyncio.to_thread(lease.revoked)
            return lease.stop_reason or "stopped"
        except InvalidJobError as exc:
            await asyncio.to_thread(lease.fail, "ValidationError", f"{exc.field}: {exc.message}")
            return "FAILURE"
        except ModelError as exc:
            await asyncio.to_thread(lease.fail, "ModelError", exc.public)
            return "FAILURE"
        images = await asyncio.to_thread(self._store_images, job, outputs)
        if await asyncio.to_thread(lease.succeed, images):
            return "SUCCESS"
        current = await asyncio.to_thread(self.tasks.get, ref.tenant, ref.task_id)
        published = set(current.output_keys) if current is not None else set()
        if published & {i.key for i in images}:
            return "SUCCESS"  # our write did land: never delete what a record publishes
        await asyncio.to_thread(self._delete_images, images)  # superseded: never visible
        return "superseded"

    def _generate_for_task(self, job: ImageJob, lease) -> list[tuple[Image.Image, int]]:
        """``generate`` with the lease's step callback; any other failure of the job is a ModelError."""
        try:
            return self.model.generate(job, on_step=lease.on_step)
        except JobError:
            raise
        except Exception as exc:
            raise _model_error(exc, job) from exc

    def _load_job(self, record, attempt: int) -> ImageJob | None:
        """The job stored at submit, with its captured input images, for ``attempt``."""
        from PIL import Image

        from storage.base import ObjectNotFound

        payload = self.tasks.payload(record)
        if payload is None:
            return None
        images = {}
        for name, key in (payload.get("inputs") or {}).items():
            if name in JOB_IMAGES:
                try:
                    data = self.store.get(key)
                except ObjectNotFound:
                    return None
                with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                    images[name] = img.convert("L" if name == "mask" else "RGB")
        job = job_from_payload(payload["job"], images)
        job.attempt = attempt
        return job

    def _delete_images(self, images: list[GeneratedImage]) -> None:
        for image in images:
            self.store.delete(image.key)

    async def check_health(self) -> None:
        """Liveness check for Serve: the model and store are in place, and a generation
        under way is making progress (a job hung inside one step holds the model's lock
        for good; failing here makes Serve replace the replica)."""
        model = getattr(self, "model", None)
        if model is None or getattr(model.pipelines.text2img, "unet", None) is None:
            raise RuntimeError("diffusion model is not loaded")
        if self.store is None:
            raise RuntimeError("object store is not open")
        stalled = model.stalled_for()
        if stalled > self.stall_seconds:
            raise RuntimeError(f"the generation under way has finished no step for {stalled:.0f} s")

    def info(self) -> dict:
        """Facts about the loaded model: what ``GET apps``-style callers and the ingress's
        pre-checks (``ingress/model_checks.py``) need. Plain JSON."""
        from deployments.schedulers import scheduler_capabilities

        p = self.model.pipelines
        return {
            "family": self.family,
            "gpu": self.gpu,
            "kind": p.kind,
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
