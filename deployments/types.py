"""Job and result types shared by the ingress and the family deployments.

Free of HTTP types: the ingress turns a validated request into a job, a family
deployment turns a job into a result.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from PIL import Image

Task = Literal["text2img", "img2img", "inpaint"]


@dataclass
class ImageJob:
    """One generation request, already validated, with its inputs fetched."""

    task: Task
    tenant: str
    request_id: str
    prompt: str
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    batch: int = 1
    strength: float = 0.7
    seed: int | None = None
    scheduler: str | None = None
    use_karras_sigmas: bool | None = None
    algorithm_type: str | None = None
    clip_skip: int | None = None
    image: Image.Image | None = None
    mask: Image.Image | None = None
    return_bytes: bool = False
    attempt: int | None = None  # async tasks: outputs are stored per attempt


#: The fields of an ``ImageJob`` that hold images; the rest are JSON scalars.
JOB_IMAGES = ("image", "mask")


def job_to_payload(job: ImageJob) -> tuple[dict[str, Any], dict[str, bytes]]:
    """An ``ImageJob`` as JSON-able fields plus PNG bytes of its images (stored for async tasks)."""
    data = {f.name: getattr(job, f.name) for f in fields(ImageJob) if f.name not in JOB_IMAGES}
    images = {}
    for name in JOB_IMAGES:
        image = getattr(job, name)
        if image is not None:
            buf = io.BytesIO()
            image.save(buf, format="PNG", compress_level=1)  # lossless; fast over small
            images[name] = buf.getvalue()
    return data, images


def job_from_payload(data: dict[str, Any], images: dict[str, Image.Image]) -> ImageJob:
    """The inverse of :func:`job_to_payload` (images already decoded)."""
    known = {f.name for f in fields(ImageJob)} - set(JOB_IMAGES)
    return ImageJob(**{k: v for k, v in data.items() if k in known}, **images)


@dataclass
class GeneratedImage:
    """One output image: where it was stored and the seed that made it."""

    key: str
    seed: int
    width: int
    height: int
    content_type: str = "image/png"
    data: bytes | None = None  # set only when the job asked for bytes


@dataclass
class ImageResult:
    images: list[GeneratedImage] = field(default_factory=list)
    run_seconds: float = 0.0


@dataclass
class TaskRef:
    """Which async task (and which attempt of it) a job belongs to."""

    tenant: str
    task_id: str
    attempt: int
    lease_seconds: float = 20.0
    renew_seconds: float = 1.0
