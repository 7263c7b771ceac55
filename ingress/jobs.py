"""Turn a validated request into a family job, and echo it back without secrets."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from PIL import Image

from deployments.catalog import TASKS
from deployments.types import ImageJob
from ingress.errors import ValidationFailed
from ingress.inputs import FetchLimits, load_image
from ingress.registry import AppConfig
from ingress.schemas.generation import GenerationRequest

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
    )
    if spec.strength is not None:
        strength = getattr(req, "strength", None)
        job.strength = strength if strength is not None else d.strength
    if not spec.inputs:
        job.height = job.height or d.height
        job.width = job.width or d.width
        return job
    images = await asyncio.gather(*(load_image(getattr(req, i.field), i.field, limits) for i in spec.inputs))
    first = await asyncio.to_thread(_size_input, images[0], req.width, req.height, app)
    setattr(job, spec.inputs[0].job_attr, first)
    job.width, job.height = first.size
    for item, image in zip(spec.inputs[1:], images[1:]):
        sized = await asyncio.to_thread(lambda im=image, mode=item.mode: im.convert(mode).resize(first.size, Image.NEAREST))
        setattr(job, item.job_attr, sized)
    return job


def _size_input(image: Image.Image, width: int | None, height: int | None, app: AppConfig) -> Image.Image:
    """Size the input image for the job, always within the app's limits.

    Both ``width`` and ``height``: that size (already checked against the app).
    One of them: the other follows from the image's aspect ratio, rounded to a
    multiple of 64, and must fall within the app's range (else a 422 naming it).
    Neither: the image is scaled, aspect kept, until both sides are within the
    app's ranges (down if larger, up if smaller), then rounded down to multiples
    of 64; an aspect ratio no size in the ranges can keep is a 422.
    """
    lim = app.limits
    ranges = {"width": _range64(lim.width.min, lim.width.max), "height": _range64(lim.height.min, lim.height.max)}
    iw, ih = image.size
    if width and height:
        return image.resize((width, height), Image.LANCZOS)
    if width or height:
        given, value = ("width", width) if width else ("height", height)
        other = "height" if width else "width"
        derived = max(64, round((ih * width / iw if width else iw * height / ih) / 64) * 64)
        lo, hi = ranges[other]
        if not lo <= derived <= hi:
            raise ValidationFailed(
                f"{other}: from the input image's aspect ratio ({iw}x{ih}) and {given} {value} it would be "
                f"{derived}, outside app {app.app_id}'s range; allowed: {lo}..{hi}; send both width and height"
            )
        size = (width, derived) if width else (derived, height)
        return image.resize(size, Image.LANCZOS)
    (wlo, whi), (hlo, hhi) = ranges["width"], ranges["height"]
    scale = min(1.0, whi / iw, hhi / ih)
    scale = max(scale, wlo / iw, hlo / ih)
    if iw * scale > whi * 1.001 or ih * scale > hhi * 1.001:
        raise ValidationFailed(
            f"image: its aspect ratio ({iw}x{ih}) cannot fit app {app.app_id}'s sizes; allowed: width "
            f"{wlo}..{whi}, height {hlo}..{hhi}; crop it, or send width and height"
        )
    w = min(whi, max(wlo, math.floor(iw * scale / 64) * 64))
    h = min(hhi, max(hlo, math.floor(ih * scale / 64) * 64))
    return image if (w, h) == image.size else image.resize((w, h), Image.LANCZOS)


def _range64(lo: float, hi: float) -> tuple[int, int]:
    """The multiples of 64 within ``lo..hi``, as an inclusive range."""
    return int(math.ceil(lo / 64) * 64), int(math.floor(hi / 64) * 64)


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
