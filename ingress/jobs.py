"""Turn a validated request into a family job, and echo it back without secrets."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from PIL import Image

from deployments.catalog import TASK_SCALES, TASKS, TaskSpec, avatar_prompt
from deployments.errors import InvalidJobError
from deployments.job_rules import check_upscale
from deployments.types import ImageJob, Job, MattingJob, SpeechJob, UpscaleJob
from ingress.contract.errors import ValidationFailed
from ingress.contract.schemas.generation import GenerationRequest
from ingress.inputs.decoding import ImageLoader
from ingress.inputs.images import FetchedImage, fit_size, size_for_app
from ingress.wiring.registry import AppConfig, FamilyConfig

_SECRET_PARAM = re.compile(r"(sig|signature|token|key|secret|credential|auth|password)", re.I)


async def build_job(
    app: AppConfig, req: GenerationRequest, tenant: str, request_id: str, images: ImageLoader,
    family: FamilyConfig | None = None,
) -> Job:
    """Fill the app's defaults, fetch the input images its task takes (``deployments.catalog.TASKS``),
    check what their headers allow (sizes, ``scale``), and only then decode them — one at a time,
    under the replica's decode budget (``images``) — into the job of the task's type. The first input
    (the reference image) is sized for the app (``TaskSpec.sizing``); the others follow its size.
    ``family`` (the app's family config) bounds upscaling jobs' output."""
    spec = TASKS[app.task]
    if spec.job == "SpeechJob":
        return speech_job(app, req, tenant, request_id)
    if spec.job == "MattingJob":
        return await _matting_job(app, spec, req, tenant, request_id, images)
    if spec.job == "UpscaleJob":
        return await _upscale_job(app, spec, req, tenant, request_id, images, family)
    d = app.defaults
    prompt = req.prompt if req.prompt is not None else d.prompt
    if app.task == "avatar":
        prompt = avatar_prompt(req.prompt, getattr(req, "gender", None), d.prompt)
    job = ImageJob(
        task=app.task,
        tenant=tenant,
        request_id=request_id,
        prompt=prompt,
        negative_prompt=req.negative_prompt,
        height=req.height,
        width=req.width,
        num_inference_steps=req.num_inference_steps or d.num_inference_steps,
        guidance_scale=req.guidance_scale if req.guidance_scale is not None else d.guidance_scale,
        batch=req.batch,
        seed=req.seed,
        scheduler=req.scheduler,
        use_karras_sigmas=req.use_karras_sigmas,
        algorithm_type=req.algorithm_type,
        clip_skip=req.clip_skip,
        return_bytes=req.base64,
        control=app.control,
        return_control_image=bool(getattr(req, "return_control_image", False)),
        lora_model=req.lora_model or None,
        lora_strength=None if req.lora_strength in (None, "") else str(req.lora_strength),
        vae=req.vae or None,
        tomesd=bool(req.tomesd),
        # Left out: the app's default, or on when a treatment is named (naming one asks for the checker).
        safety_checker=bool(req.safety_checker if req.safety_checker is not None
                            else d.safety_checker or req.safety_checker_type is not None),
        safety_checker_type=req.safety_checker_type,
        gender=getattr(req, "gender", None),
        remove_background=bool(getattr(req, "remove_background", False)),
        bg_color=_hex(getattr(req, "bg_color", None)),
    )
    if spec.strength is not None:
        strength = getattr(req, "strength", None)
        job.strength = strength if strength is not None else d.strength
    if not spec.inputs or spec.output_size == "request":
        job.height = job.height or d.height
        job.width = job.width or d.width
        if not spec.inputs:
            return job
    fetched = await asyncio.gather(*(images.fetch(getattr(req, i.field), i.field) for i in spec.inputs))
    if spec.sizing == "fit":
        job.image = await images.decode(fetched[0], fit_size(fetched[0].size, *_app_max(app)))
        return job
    size = size_for_app(fetched[0].size, req.width, req.height, app.app_id, app.limits)  # a 422 costs no decoding
    setattr(job, spec.inputs[0].job_attr, await images.decode(fetched[0], size))
    job.width, job.height = size
    for item, image in zip(spec.inputs[1:], fetched[1:]):  # a mask: its own mode, nothing averaged
        convert = functools.partial(Image.Image.convert, mode=item.mode)
        setattr(job, item.job_attr, await images.decode(image, size, Image.Resampling.NEAREST, then=convert))
    return job


def _app_max(app: AppConfig) -> tuple[int, int]:
    return int(app.limits.width.max), int(app.limits.height.max)


async def _inputs(app: AppConfig, spec: TaskSpec, req: GenerationRequest, images: ImageLoader) -> list[FetchedImage | None]:
    """The task's input images, fetched (not decoded); None for an optional one left out."""
    async def one(field: str) -> FetchedImage | None:
        value = getattr(req, field, None)
        return await images.fetch(value, field) if value else None

    return list(await asyncio.gather(*(one(item.field) for item in spec.inputs)))


async def _fitted(images: ImageLoader, app: AppConfig, image: FetchedImage | None) -> Image.Image | None:
    """An input decoded and shrunk (aspect kept) to fit the app's largest sides."""
    return None if image is None else await images.decode(image, fit_size(image.size, *_app_max(app)))


async def _matting_job(app: AppConfig, spec: TaskSpec, req: GenerationRequest, tenant: str, request_id: str,
                       images: ImageLoader) -> MattingJob:
    color = None
    bg_color = getattr(req, "bg_color", None)
    channels = (req.r_color, req.g_color, req.b_color)  # type: ignore[attr-defined]
    if bg_color is True or (not isinstance(bg_color, str) and any(c is not None for c in channels)):
        # a colour background: the channels (one left out is 255)
        color = [255 if c is None else c for c in channels]
    elif isinstance(bg_color, str) and bg_color:
        color = list(_rgb(bg_color))
    image, background = await _inputs(app, spec, req, images)
    return MattingJob(task=app.task, tenant=tenant, request_id=request_id, return_bytes=req.base64,
                      image=await _fitted(images, app, image), bg_image=await _fitted(images, app, background),
                      bg_color=color, blur=bool(getattr(req, "blur", False)))


async def _upscale_job(app: AppConfig, spec: TaskSpec, req: GenerationRequest, tenant: str, request_id: str,
                       images: ImageLoader, family: FamilyConfig | None) -> UpscaleJob:
    (fetched,) = await _inputs(app, spec, req, images)
    assert fetched is not None  # a required input (checked with the app's rules)
    scale = getattr(req, "scale", None) or app.defaults.scale
    width, height = fit_size(fetched.size, *_app_max(app))
    if family is not None:  # from the header: a refused scale costs no decoding
        try:
            check_upscale(width, height, scale, family.max_output_pixels, TASK_SCALES[app.task])
        except InvalidJobError as exc:
            raise ValidationFailed(exc.public) from None
    d = app.defaults
    return UpscaleJob(
        task=app.task, tenant=tenant, request_id=request_id, return_bytes=req.base64,
        image=await images.decode(fetched, (width, height)), scale=scale,
        prompt=req.prompt if req.prompt is not None else d.prompt, negative_prompt=req.negative_prompt,
        num_inference_steps=req.num_inference_steps or d.num_inference_steps,
        guidance_scale=req.guidance_scale if req.guidance_scale is not None else d.guidance_scale, seed=req.seed,
    )


def output_bytes_bound(job: Job, default_side: int = 1024) -> int | None:
    """The most bytes a job's output files can take (a PNG holds at most ~3 bytes a pixel, 4 with
    alpha), from the job alone: what ``base64: true`` would inline. None: audio (bounded by its text)."""
    if isinstance(job, UpscaleJob) and job.image is not None:
        return job.image.width * job.scale * job.image.height * job.scale * 3
    if isinstance(job, MattingJob) and job.image is not None:
        return job.image.width * job.image.height * 4
    if isinstance(job, ImageJob):
        width = job.width or default_side
        height = job.height or default_side
        extra = 1 if job.return_control_image else 0
        return width * height * (4 if job.remove_background else 3) * (job.batch + extra)
    return None


def _rgb(value: str) -> tuple[int, int, int]:
    from deployments.pipelines.compositing import parse_hex_color

    try:
        return parse_hex_color(value)
    except InvalidJobError as exc:
        raise ValidationFailed(exc.public) from None


def _hex(value: object) -> str | None:
    """A hex colour as ``#RRGGBB`` (the job's form); anything else: none."""
    if not isinstance(value, str) or not value:
        return None
    return "#%02X%02X%02X" % _rgb(value)


def speech_job(app: AppConfig, req: Any, tenant: str, request_id: str) -> SpeechJob:
    """A Text To Speech job from a ``TextToSpeechRequest`` (``audio_parameters`` flattened)."""
    params = req.audio_parameters
    return SpeechJob(
        task=app.task, tenant=tenant, request_id=request_id, prompt=req.prompt,
        voice_id=params.voice_id if params else None,
        stability=params.stability if params else None,
        similarity_boost=params.similarity_boost if params else None,
        style=params.style if params else None,
        use_speaker_boost=params.use_speaker_boost if params else None,
    )


def redact(req: GenerationRequest) -> dict[str, Any]:
    """The request as echoed in ``input`` and kept in task records.

    Inline images are summarised; input URLs keep their scheme, host, port and
    path, lose any user info, and query values whose names look like credentials
    become ``REDACTED``; the webhook URL (a capability: whoever knows it can post
    to it) is replaced entirely by ``redacted:sha256:<first 16 hex of SHA-256 of the URL>``.
    """
    echo = req.model_dump(exclude_none=True)
    for field in _INPUT_FIELDS:
        value = echo.get(field)
        if isinstance(value, str):
            echo[field] = redact_url(value)
    if isinstance(echo.get("webhook"), str):
        echo["webhook"] = webhook_fingerprint(echo["webhook"])
    return echo


_INPUT_FIELDS = sorted({i.field for spec in TASKS.values() for i in spec.inputs})


def webhook_fingerprint(url: str) -> str:
    """What records and echoes keep of a webhook URL."""
    return "redacted:sha256:" + hashlib.sha256(url.encode()).hexdigest()[:16]


def redact_url(value: str) -> str:
    """An input as echoed: a URL keeps its scheme, host, port and path, loses any user info, and
    credential-like query values become ``REDACTED``; inline data is summarised."""
    if value.lower().startswith(("http://", "https://")):
        try:
            parts = urlsplit(value)
            netloc = parts.hostname or ""
            if ":" in netloc:  # an IPv6 literal keeps its brackets
                netloc = f"[{netloc}]"
            if parts.port:
                netloc += f":{parts.port}"
        except ValueError:
            return "<unparseable URL>"
        query = [(k, "REDACTED" if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query, True)]
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))
    return f"<inline image, {len(value)} characters>"
