"""Job and result types shared by the ingress and the family deployments.

Free of HTTP types: the ingress turns a validated request into a job, a family
deployment turns a job into a :class:`Result` of stored :class:`Output` files.
``Job`` holds what every job has; each output kind adds its fields (``ImageJob``
for images; audio, text and vectors next). A job travels to an async task's
worker as a payload: JSON scalars plus its input images as PNG bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from PIL import Image


@dataclass
class Job:
    """One request, already validated, with its inputs fetched."""

    task: str
    tenant: str
    request_id: str
    return_bytes: bool = False  # outputs inline (``base64: true``) as well as stored
    attempt: int | None = None  # async tasks: outputs are stored per attempt

    #: The fields that hold input images (PIL); the rest are JSON scalars.
    IMAGES: ClassVar[tuple[str, ...]] = ()


@dataclass
class ImageJob(Job):
    """A diffusion job: text and options, and the input images its task takes."""

    prompt: str = ""
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
    control: str | None = None  # ControlNet tasks: which of the family's controlnets (from the app)
    return_control_image: bool = False
    lora_model: str | None = None
    lora_strength: str | None = None
    vae: str | None = None
    tomesd: bool = False
    safety_checker: bool = False
    safety_checker_type: str | None = None
    gender: str | None = None  # Face Avatar: fills the default prompt's {gender_word}
    remove_background: bool = False  # Face Avatar: transparent PNG (through the background-removal family)
    bg_color: str | None = None  # Face Avatar: "#RRGGBB" behind the subject
    original_prompt: str | None = None  # enhance_prompt: the client's prompt (``prompt`` is the rewrite)
    image: Image.Image | None = None
    mask: Image.Image | None = None

    IMAGES: ClassVar[tuple[str, ...]] = ("image", "mask")

    def input_image(self, name: str = "image") -> Image.Image:
        """An input image the task needs (``image`` or ``mask``); a 422 naming it when absent."""
        from deployments.errors import InvalidJobError

        value = getattr(self, name)
        if value is None:
            raise InvalidJobError(name, f"{self.task} needs an input {name}")
        return value


@dataclass
class MattingJob(Job):
    """A background-removal job: the image, and what goes behind the subject (nothing:
    a transparent PNG; ``bg_image``, ``bg_color`` as ``[r, g, b]``, or the image's own
    background blurred)."""

    image: Image.Image | None = None
    bg_image: Image.Image | None = None
    bg_color: list[int] | None = None
    blur: bool = False

    IMAGES: ClassVar[tuple[str, ...]] = ("image", "bg_image")


@dataclass
class UpscaleJob(Job):
    """An upscaling job: the image and the factor; the prompt fields are for diffusion
    upscalers (Stable Diffusion x4), which are guided by text."""

    image: Image.Image | None = None
    scale: int = 4
    prompt: str = ""
    negative_prompt: str | None = None
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    seed: int | None = None
    original_prompt: str | None = None  # enhance_prompt: the client's prompt (``prompt`` is the rewrite)

    IMAGES: ClassVar[tuple[str, ...]] = ("image",)


@dataclass
class SpeechJob(Job):
    """A Text To Speech job: the text and ElevenLabs-style voice settings (``audio_parameters``).
    ``voice_id`` None: the family's default voice. Settings a local engine cannot honour are
    refused by the family (``InvalidJobError``), never ignored."""

    prompt: str = ""
    voice_id: str | None = None
    stability: float | None = None  # 0..1
    similarity_boost: float | None = None  # 0..1
    style: float | None = None  # 0..1
    use_speaker_boost: bool | None = None


JOB_TYPES: dict[str, type[Job]] = {
    "ImageJob": ImageJob, "MattingJob": MattingJob, "UpscaleJob": UpscaleJob, "SpeechJob": SpeechJob,
}


def job_to_payload(job: Job) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A job as JSON-able fields plus PNG bytes of its images (stored for async tasks)."""
    images = set(job.IMAGES)
    data: dict[str, Any] = {f.name: getattr(job, f.name) for f in fields(job) if f.name not in images}
    data["job_type"] = type(job).__name__
    encoded = {}
    for name in images:
        image = getattr(job, name)
        if image is not None:
            buf = io.BytesIO()
            image.save(buf, format="PNG", compress_level=1)  # lossless; fast over small
            encoded[name] = buf.getvalue()
    return data, encoded


def job_from_payload(data: dict[str, Any], images: dict[str, Image.Image]) -> Job:
    """The inverse of :func:`job_to_payload` (images already decoded)."""
    job_type = JOB_TYPES[data.get("job_type", "ImageJob")]
    image_names = set(job_type.IMAGES)
    known = {f.name for f in fields(job_type)} - image_names
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
    kwargs.update((k, v) for k, v in images.items() if k in image_names)  # disjoint from ``known``
    return job_type(**kwargs)


def payload_images(job_type_name: str | None) -> list[str]:
    """The image inputs a stored payload of this job type may carry."""
    return list(JOB_TYPES[job_type_name or "ImageJob"].IMAGES)


@dataclass
class Output:
    """One stored output file, and what is known about it (an image's seed and size)."""

    key: str
    content_type: str
    data: bytes | None = None  # set only when the job asked for bytes
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """A job's outputs, in order, and facts about them for the envelope's ``meta``."""

    outputs: list[Output] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    run_seconds: float = 0.0
    #: Which replica ran it and how (e.g. whether a LoRA stack was loaded or already warm): for
    #: response headers and logs, not the envelope.
    served_by: dict[str, str] = field(default_factory=dict)


@dataclass
class TaskRef:
    """Which async task (and which attempt of it) a job belongs to."""

    tenant: str
    task_id: str
    attempt: int
    lease_seconds: float = 20.0
    renew_seconds: float = 1.0
