"""Turn a validated request into a family job, and echo it back without secrets."""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from PIL import Image

from deployments.types import ImageJob
from ingress.inputs import FetchLimits, fit_image, load_image
from ingress.registry import AppConfig
from ingress.schemas.generation import GenerationRequest, ImageToImageRequest

_SECRET_PARAM = re.compile(r"(sig|signature|token|key|secret|credential|auth|password)", re.I)


async def build_job(
    app: AppConfig, req: GenerationRequest, tenant: str, request_id: str, limits: FetchLimits
) -> ImageJob:
    """Fill the app's defaults, fetch and size the input images, and make the job."""
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
    )
    if app.task == "text2img":
        job.height = job.height or d.height
        job.width = job.width or d.width
        return job
    assert isinstance(req, ImageToImageRequest)
    job.strength = req.strength if req.strength is not None else d.strength
    loads = [load_image(req.image, "image", limits)]
    if app.task == "inpaint":
        loads.append(load_image(req.mask_url, "mask_url", limits))
    images = await asyncio.gather(*loads)
    job.image = await asyncio.to_thread(_size_input, images[0], req.width, req.height, app)
    job.width, job.height = job.image.size
    if app.task == "inpaint":
        job.mask = await asyncio.to_thread(lambda: images[1].convert("L").resize(job.image.size, Image.NEAREST))
    return job


def _size_input(image: Image.Image, width: int | None, height: int | None, app: AppConfig) -> Image.Image:
    """Explicit width/height resize the input; otherwise fit it within the app's limits."""
    if width or height:
        w = width or round(image.width * (height / image.height) / 64) * 64 or 64
        h = height or round(image.height * (width / image.width) / 64) * 64 or 64
        return image.resize((w, h), Image.LANCZOS)
    side = int(min(app.limits.width.max, app.limits.height.max))
    return fit_image(image, max_side=side, multiple=64)


def redact(req: GenerationRequest) -> dict[str, Any]:
    """The request as echoed in ``input``: inline images summarised, URL secrets masked."""
    echo = req.model_dump(exclude_none=True)
    for field in ("image", "mask_url", "webhook"):
        value = echo.get(field)
        if isinstance(value, str):
            echo[field] = _redact_value(value)
    return echo


def _redact_value(value: str) -> str:
    if value.startswith(("http://", "https://")):
        parts = urlsplit(value)
        query = [(k, "REDACTED" if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(parts.query, True)]
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))
    return f"<inline image, {len(value)} characters>"
