"""Job and result types shared by the ingress and the family deployments.

Free of HTTP types: the ingress turns a validated request into a job, a family
deployment turns a job into a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
