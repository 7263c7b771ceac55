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

import asyncio
import importlib
import io
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image
from ray import serve

from deployments.catalog import MAX_SEED, TASKS, lora_stack_id
from deployments.errors import InvalidJobError, JobError
from deployments.families.base import STALL_SECONDS, FamilyBase, OnStep, Packaged, model_error, run_to_end
from deployments.job_rules import check_clip_skip, check_strength
from deployments.schedulers import build_scheduler
from deployments.types import ImageJob

if TYPE_CHECKING:

    from deployments.loader import DiffusionPipelines
    from storage.base import ObjectStore
    from storage.settings import StorageSettings

logger = logging.getLogger("deployments.families.diffusion")

BUILTIN_TASKS = tuple(name for name, spec in TASKS.items() if spec.kind == "diffusion" and spec.handler is None)
DEFAULT_SAFETY_TREATMENT = "sensitive_content_text"  # seed 002's default
MAX_SIDE = 1536  # the contract's largest side; a family may set its own
MAX_BATCH = 8
LORA_STACKS_PER_REPLICA = 3  # LoRA stacks a replica keeps loaded (Serve multiplexing evicts the LRU one)


@dataclass
class Generated:
    """What one job produced: ``(image, seed)`` per batch item, extra images (a control
    image), and the safety checker's flags (None: not checked)."""

    images: list[tuple[Image.Image, int]]
    extras: list[Image.Image] = field(default_factory=list)
    flagged: list[bool] | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # what the task adds to the result's meta (e.g. the face used)


@dataclass
class DiffusionOptions:
    """The seed-002 options a family's replica can honour, from its components."""

    loras: Any = None  # LoraLibrary
    vaes: Any = None  # VaeLibrary
    safety: Any = None  # SafetyChecker
    tomesd_ratio: float = 0.5
    tomesd_max_downsample: int = 1
    _vae_cache: dict[str, Any] = field(default_factory=dict)

    def vae(self, name: str, pipelines: DiffusionPipelines) -> Any:
        """A named VAE, loaded once (a few are kept; the oldest is dropped)."""
        from deployments.loader import resolve_dtype
        from deployments.pipelines.vae import load_vae

        if name not in self._vae_cache:
            if len(self._vae_cache) >= 2:
                self._vae_cache.pop(next(iter(self._vae_cache)))
            dtype = resolve_dtype(pipelines.dtype, pipelines.device)
            self._vae_cache[name] = load_vae(self.vaes.path(name), dtype, pipelines.device)
        return self._vae_cache[name]


class DiffusionModel:
    """Runs jobs on one set of loaded pipelines (and the task handlers built on them).
    No IO, one job at a time."""

    def __init__(
        self,
        pipelines: DiffusionPipelines,
        max_side: int = MAX_SIDE,
        max_batch: int = MAX_BATCH,
        handlers: dict[str, Any] | None = None,
        options: DiffusionOptions | None = None,
    ):
        self.pipelines = pipelines
        self.max_side = max_side
        self.max_batch = max_batch
        self.handlers = handlers or {}
        self.options = options or DiffusionOptions()
        # Captured once: the pipelines' ``scheduler`` attribute is replaced per request.
        self.base_scheduler_config = dict(pipelines.text2img.scheduler.config)
        encoders = [pipelines.text2img.text_encoder]
        if getattr(pipelines.text2img, "text_encoder_2", None) is not None:
            encoders.append(pipelines.text2img.text_encoder_2)
        self.text_encoder_layers = min(e.config.num_hidden_layers for e in encoders if e is not None)
        self._lock = threading.Lock()

    def tasks(self) -> list[str]:
        return [*BUILTIN_TASKS, *self.handlers]

    def all_pipelines(self) -> list[Any]:
        pipes = [self.pipelines.text2img, self.pipelines.img2img, self.pipelines.inpaint]
        for handler in self.handlers.values():
            pipes.extend(handler.all_pipelines())
        return pipes

    # -- validation -------------------------------------------------------
    def _seeds(self, job: ImageJob) -> list[int]:
        if job.seed is None:
            base = secrets.randbelow(MAX_SEED + 1 - (job.batch - 1))
        else:
            base = job.seed
            if not 0 <= base <= MAX_SEED:
                raise InvalidJobError("seed", f"seed must be in 0..{MAX_SEED} (image i uses seed + i)")
        return [base + i for i in range(job.batch)]

    def check_options(self, job: ImageJob) -> Any:
        """Refuse options this replica cannot honour; return the parsed LoRA request (or None)."""
        from deployments.pipelines.safety import TREATMENTS

        opts = self.options
        lora = None
        if job.lora_model or job.lora_strength:
            if opts.loras is None:
                raise InvalidJobError("lora_model", "this app has no LoRAs; omit lora_model")
            lora = opts.loras.parse(job.lora_model, job.lora_strength)
        if job.vae:
            if opts.vaes is None:
                raise InvalidJobError("vae", "this app has no custom VAEs; omit vae")
            opts.vaes.parse(job.vae)
        if job.safety_checker and opts.safety is None:
            raise InvalidJobError("safety_checker", "this app has no safety checker; send false")
        if job.safety_checker_type is not None and job.safety_checker_type not in TREATMENTS:
            raise InvalidJobError("safety_checker_type", f"allowed: one of {', '.join(TREATMENTS)}")
        if job.return_control_image and "return_control_image" not in TASKS[job.task].options:
            raise InvalidJobError("return_control_image", "only ControlNet and Illusion apps have a control image")
        return lora

    def _check(self, job: ImageJob) -> None:
        if job.task not in self.tasks():
            raise InvalidJobError("task", f"this replica does not run {job.task!r}; it runs {', '.join(self.tasks())}")
        if not 1 <= job.batch <= self.max_batch:
            raise InvalidJobError("batch", f"batch must be in 1..{self.max_batch}")
        if job.num_inference_steps < 1:
            raise InvalidJobError("num_inference_steps", "num_inference_steps must be at least 1")
        check_clip_skip(job.clip_skip, self.text_encoder_layers)
        spec = TASKS[job.task]
        for item in spec.inputs:
            if item.required and getattr(job, item.job_attr) is None:
                raise InvalidJobError(item.job_attr, f"{job.task} needs an input {item.job_attr}")
        if spec.strength is not None and not 0.0 <= job.strength <= 1.0:
            raise InvalidJobError("strength", "strength must be in 0..1")
        check_strength(job.task, job.strength, job.num_inference_steps)
        if job.task in self.handlers:
            self.handlers[job.task].check(job)
        if not spec.inputs or spec.output_size == "request":
            factor = self.pipelines.vae_scale_factor
            for name in ("height", "width"):
                value = getattr(job, name)
                if value is not None and (value < factor or value % factor):
                    raise InvalidJobError(name, f"{name} must be a positive multiple of {factor}")
            width = job.width or self.pipelines.default_width
            height = job.height or self.pipelines.default_height
        else:
            width, height = job.input_image().size
        # Checked again here (the ingress sizes jobs first): a job is never larger than the family allows.
        for name, value in (("width", width), ("height", height)):
            if value > self.max_side:
                raise InvalidJobError(name, f"{name} {value} exceeds this model's limit; allowed: at most {self.max_side}")

    # -- generation -------------------------------------------------------
    def generate(self, job: ImageJob, *, on_step: OnStep | None = None, lora_stack: Any = None) -> Generated:
        """Run ``job``; return its images (``(image, seed)`` per batch item) and extras.

        ``lora_stack`` is the loaded stack of the job's LoRAs (``LoadedStack``), when it
        has any. Raises ``InvalidJobError`` for a job this model cannot do and
        ``ModelError`` when diffusers fails on a valid job. Blocking: call it from a
        worker thread, never on an event loop.
        """
        import torch

        self._check(job)
        lora = self.check_options(job)
        if lora is not None and lora_stack is None:
            raise InvalidJobError("lora_model", "the LoRA stack is not loaded on this replica; retry")
        seeds = self._seeds(job)
        scheduler = build_scheduler(
            job.scheduler,
            self.base_scheduler_config,
            use_karras_sigmas=job.use_karras_sigmas,
            algorithm_type=job.algorithm_type,
        )
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

        def _callback(p, step: int, timestep, callback_kwargs: dict) -> dict:
            # ``on_step`` raises ``TaskStopped`` to stop the job here (its caller went away, or its
            # task was cancelled): the exception leaves the denoising loop at once and skips the VAE
            # decode, which setting ``p._interrupt`` would still run. ``_options`` and the next
            # job's fresh scheduler leave the pipelines as before.
            if on_step is not None:
                on_step(step + 1, int(p.num_timesteps))
            return {}

        kwargs["callback_on_step_end"] = _callback
        kwargs["callback_on_step_end_tensor_inputs"] = []

        with self._lock, self._task_call(job) as (pipe, task_kwargs, extras, task_meta), \
                self._options(job, pipe, lora, lora_stack):
            kwargs.update(task_kwargs)
            self._weighted_prompts(job, pipe, kwargs)
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
        handler = self.handlers.get(job.task)
        if handler is not None and hasattr(handler, "post"):
            images = handler.post(job, images)
        flagged = None
        if job.safety_checker:
            images, flagged = self.options.safety.screen(images, job.safety_checker_type or DEFAULT_SAFETY_TREATMENT)
        return Generated(list(zip(images, seeds)), extras, flagged, dict(task_meta))

    @contextmanager
    def _task_call(self, job: ImageJob) -> Iterator[tuple[Any, dict[str, Any], list[Image.Image], dict[str, Any]]]:
        """The pipeline, task kwargs, extra outputs and result meta: the built-in tasks here, the
        others from their handler (whose ``call`` yields the first three, or all four)."""
        from PIL import Image

        if job.task in self.handlers:
            with self.handlers[job.task].call(job) as call:
                yield (*call, {}) if len(call) == 3 else call
            return
        pipe = self.pipelines.pipeline(job.task)
        if job.task == "text2img":
            yield pipe, {"height": job.height or self.pipelines.default_height,
                         "width": job.width or self.pipelines.default_width}, [], {}
            return
        image = job.input_image().convert("RGB")
        kwargs: dict[str, Any] = {"image": image, "strength": job.strength}
        if job.task == "inpaint":
            kwargs.update(mask_image=job.input_image("mask").convert("L").resize(image.size, Image.Resampling.NEAREST),
                          height=image.height, width=image.width)
        yield pipe, kwargs, [], {}

    @contextmanager
    def _options(self, job: ImageJob, pipe: Any, lora: Any, lora_stack: Any) -> Iterator[None]:
        """LoRA stack, VAE and token merging for one call; the base state again after it."""
        from deployments.pipelines.lora import deactivate, loaded_adapters
        from deployments.pipelines.token_merging import merged_tokens
        from deployments.pipelines.vae import swap_vae

        with ExitStack() as stack:
            if lora is not None:
                lora_stack.activate(lora)
                stack.callback(deactivate, pipe)
            elif self.options.loras is not None and loaded_adapters(pipe):
                deactivate(pipe)
            if job.vae:
                stack.enter_context(swap_vae(self.all_pipelines(), self.options.vae(job.vae, self.pipelines)))
            if job.tomesd:
                stack.enter_context(merged_tokens(pipe, self.options.tomesd_ratio,
                                                  max_downsample=self.options.tomesd_max_downsample))
            yield

    @staticmethod
    def _weighted_prompts(job: ImageJob, pipe: Any, kwargs: dict[str, Any]) -> None:
        """``(word:1.3)`` / ``[word]`` prompts become weighted embeddings (plain prompts stay text)."""
        from deployments.pipelines.prompt_weights import encode_weighted, has_weights

        prompt, negative = kwargs.get("prompt"), kwargs.get("negative_prompt")
        if not (has_weights(prompt) or has_weights(negative)):
            return
        embeds = encode_weighted(pipe, prompt or "", negative, clip_skip=job.clip_skip)
        for name in ("prompt", "negative_prompt", "clip_skip"):
            kwargs.pop(name, None)
        kwargs.update(embeds)


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class _Prepared:
    stack: Any  # the job's LoadedStack
    fresh: bool  # loaded for this job (else it was warm on this replica)


class DiffusionFamily(FamilyBase[ImageJob]):
    """Serve deployment for one diffusion model family on one GPU type: the base
    pipelines, the task handlers its apps use (``deployments.catalog.TASKS``) and the
    options its components allow. LoRA stacks are Serve multiplexed models: a request's
    stack id (``deployments.catalog.lora_stack_id``) routes it to a replica that holds
    the stack; each replica keeps ``LORA_STACKS_PER_REPLICA`` and evicts the least
    recently used."""

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
        tasks: list[str] | None = None,
        controls: dict[str, list[str]] | None = None,
        components: dict[str, Any] | None = None,
        helpers: dict[str, Any] | None = None,
    ):
        from deployments.loader import load_pipeline

        super().__init__(family=family, gpu=gpu, storage=storage, store=store, stall_seconds=stall_seconds)
        self.helpers = dict(helpers or {})
        self.model_source = model_source
        self._stack_loads = 0  # LoRA stacks this replica has loaded (each a Serve multiplexing miss)
        components = components or {}
        start = time.perf_counter()
        pipelines = load_pipeline(model_source, revision=revision, dtype=dtype)
        handlers = _handlers(pipelines, tasks or list(BUILTIN_TASKS), controls or {}, components)
        self.model = DiffusionModel(pipelines, max_side=max_side, handlers=handlers,
                                    options=_options(pipelines, components))
        load_seconds = time.perf_counter() - start
        logger.info(
            "model loaded family=%s gpu=%s source=%s kind=%s device=%s dtype=%s tasks=%s load_seconds=%.2f",
            family, gpu, model_source, pipelines.kind, pipelines.device, pipelines.dtype, ",".join(self.model.tasks()),
            load_seconds,
            extra={"family": family, "gpu": gpu, "model_source": model_source, "kind": pipelines.kind,
                   "device": pipelines.device, "dtype": pipelines.dtype, "load_seconds": round(load_seconds, 3)},
        )

    async def prepare(self, job: ImageJob) -> Any:
        """The task's own async preparation (e.g. a subject mask from another family), then the
        job's LoRA stack, through Serve's multiplexing (None without LoRAs)."""
        handler = self.model.handlers.get(job.task)
        if handler is not None and hasattr(handler, "prepare"):
            await handler.prepare(job, self.call_helper)
        stack_id = lora_stack_id(job.lora_model)
        if not stack_id or self.model.options.loras is None:
            return None
        await asyncio.to_thread(self.model.check_options, job)  # a bad name never reaches the loader
        loads = self._stack_loads
        stack = await self.lora_stack(stack_id)
        return _Prepared(stack, fresh=self._stack_loads != loads)

    @serve.multiplexed(max_num_models_per_replica=LORA_STACKS_PER_REPLICA)
    async def lora_stack(self, stack_id: str) -> Any:
        """Load a LoRA stack (called by Serve's multiplexing cache on a miss)."""
        from deployments.pipelines.lora import load_stack

        logger.info("loading LoRA stack %s", stack_id, extra={"lora_stack": stack_id})
        self._stack_loads += 1
        return await run_to_end(load_stack, self.model.pipelines.text2img, self.model.options.loras,
                                stack_id.split(","), self._model_lock)  # a cancelled load still ends first

    def describe(self, prepared: Any) -> dict[str, str]:
        return {"lora_stack": "loaded" if prepared.fresh else "warm"} if prepared is not None else {}

    async def finish(self, job: ImageJob, produced: Generated, prepared: Any = None) -> Generated:
        """The task's own post-processing, outside the model lock (e.g. Face Avatar's background)."""
        handler = self.model.handlers.get(job.task)
        if handler is not None and hasattr(handler, "finish"):
            return await handler.finish(job, produced, self.call_helper)
        return produced

    def produce(self, job: ImageJob, on_step: OnStep | None, prepared: Any = None) -> Generated:
        return self.model.generate(job, on_step=on_step, lora_stack=prepared.stack if prepared is not None else None)

    def package(self, job: ImageJob, produced: Generated) -> tuple[list[Packaged], dict[str, Any]]:
        files = [Packaged(encode_png(image), "image/png", "png", {"seed": seed, "width": image.width,
                                                                  "height": image.height})
                 for image, seed in produced.images]
        files += [Packaged(encode_png(image), "image/png", "png", {"control_image": True}) for image in produced.extras]
        first = produced.images[0][0]
        meta: dict[str, Any] = {"seeds": [seed for _, seed in produced.images], "width": first.width,
                                "height": first.height}
        if produced.extras:
            meta["control_image"] = True  # the last output is the control image
        if produced.flagged is not None:
            meta["nsfw"] = produced.flagged
        meta.update(produced.meta)
        return files, meta

    def loaded(self) -> bool:
        model = getattr(self, "model", None)
        return model is not None and getattr(model.pipelines.text2img, "unet", None) is not None

    def facts(self) -> dict[str, Any]:
        """What ``GET apps`` and the ingress's pre-checks need."""
        from deployments.schedulers import scheduler_capabilities

        p = self.model.pipelines
        opts = self.model.options
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
            "tasks": self.model.tasks(),
            "loras": opts.loras.names() if opts.loras is not None else [],
            "vaes": opts.vaes.names() if opts.vaes is not None else [],
            "safety_checker": opts.safety is not None,
        }


def _handlers(pipelines: DiffusionPipelines, tasks: list[str], controls: dict[str, list[str]],
              components: dict[str, Any]) -> dict[str, Any]:
    """The task handlers (``TaskSpec.handler``) of the tasks this family's apps use, each
    with the controls (ControlNets) its apps name."""
    handlers = {}
    for task in dict.fromkeys(tasks):
        spec = TASKS[task]
        if spec.handler is None:
            continue
        module, _, name = spec.handler.partition(":")
        cls = getattr(importlib.import_module(module), name)
        handlers[task] = cls(pipelines, components, controls.get(task, []))
    return handlers


def _options(pipelines: DiffusionPipelines, components: dict[str, Any]) -> DiffusionOptions:
    from deployments.loader import resolve_dtype

    options = DiffusionOptions()
    if components.get("loras"):
        from deployments.pipelines.lora import LoraLibrary

        options.loras = LoraLibrary(components["loras"])
    if components.get("vaes"):
        from deployments.pipelines.vae import VaeLibrary

        options.vaes = VaeLibrary(components["vaes"])
    if components.get("safety_checker"):
        from deployments.pipelines.safety import SafetyChecker

        options.safety = SafetyChecker.load(components["safety_checker"], device=pipelines.device,
                                            dtype=resolve_dtype(pipelines.dtype, pipelines.device))
    merging = components.get("token_merging") or {}
    options.tomesd_ratio = merging.get("ratio", options.tomesd_ratio)
    options.tomesd_max_downsample = merging.get("max_downsample", options.tomesd_max_downsample)
    return options
