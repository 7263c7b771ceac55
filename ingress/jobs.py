"""Turn a validated request into a family job, and echo it back without secrets."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from PIL import Image

from deployments.catalog import TASKS
from deployments.types import ImageJob
from ingress.contract.schemas.generation import GenerationRequest
from ingress.inputs import FetchLimits, load_image
from ingress.inputs.images import size_for_app
from ingress.wiring.registry import AppConfig

_SECRET_PARAM = re.compile(r"(sig|signature|token|key|secret|credential|auth|password)", re.I)


async def build_job(
    app: AppConfig, req: GenerationRequest, tenant: str, request_id: str, limits: FetchLimits
) -> ImageJob:
    """Fill the app's defaults, fetch and size the input images its task takes
    (``deployments.catalog.TASKS``), and make the job. The first input (the
    reference image) is sized for the app; the others follow its size."""
    spec = TASKS[app.task]
    d = app.defaults
    job = ImageJob(
        task=app.task,
        tenant=tenant,
        request_id=request_id,
        prompt=req.prompt if req.prompt is not None else d.prompt,
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
    )
    if spec.strength is not None:
        strength = getattr(req, "strength", None)
        job.strength = strength if strength is not None else d.strength
    if not spec.inputs:
        job.height = job.height or d.height
        job.width = job.width or d.width
        return job
    images = await asyncio.gather(*(load_image(getattr(req, i.field), i.field, limits) for i in spec.inputs))
    first = await asyncio.to_thread(size_for_app, images[0], req.width, req.height, app.app_id, app.limits)
    setattr(job, spec.inputs[0].job_attr, first)
    job.width, job.height = first.size
    for item, image in zip(spec.inputs[1:], images[1:]):
        setattr(job, item.job_attr, await asyncio.to_thread(_follow, image, item.mode, first.size))
    return job


def _follow(image: Image.Image, mode: str, size: tuple[int, int]) -> Image.Image:
    """A secondary input (a mask) in its mode, at the reference image's size."""
    return image.convert(mode).resize(size, Image.Resampling.NEAREST)


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
            echo[field] = _redact_value(value)
    if isinstance(echo.get("webhook"), str):
        echo["webhook"] = webhook_fingerprint(echo["webhook"])
    return echo


_INPUT_FIELDS = sorted({i.field for spec in TASKS.values() for i in spec.inputs})


def webhook_fingerprint(url: str) -> str:
    """What records and echoes keep of a webhook URL."""
    return "redacted:sha256:" + hashlib.sha256(url.encode()).hexdigest()[:16]


def _redact_value(value: str) -> str:
    if value.startswith(("http://", "https://")):
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
