"""Request schemas of the image generation routes.

Every documented range and default of CONTRACT.md "Common body fields" and the
seed-002 extra options lives here, in pydantic ``Field``s. Unknown fields are
ignored (as the existing API does); a known option an app cannot honour is
rejected later, in :mod:`ingress.contract.validation`, with a 422.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from deployments.catalog import MAX_SEED, Gender, GpuType, UpscaleFactor
from deployments.pipelines.safety import SafetyTreatment
from deployments.schedulers import SchedulerName

MAX_PROMPT_CHARS = 4000


def _yes_no(value: Any) -> Any:
    """Seed 002 sends flags as "yes"/"no"; accept those beside JSON booleans."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("yes", "true", "1"):
            return True
        if lowered in ("no", "false", "0"):
            return False
    return value


Flag = Annotated[bool, BeforeValidator(_yes_no)]
#: ``bg_color``: a flag on Background Removal apps (the colour is ``r_color``/``g_color``/``b_color``),
#: a hex colour on Face Avatar apps (Background Removal takes a hex colour too).
HEX_COLOR = r"^#?([0-9A-Fa-f]{3}|[0-9A-Fa-f]{6})$"
ColorOrFlag = Annotated[bool | Annotated[str, StringConstraints(pattern=HEX_COLOR)], BeforeValidator(_yes_no)]
_CHANNEL = "0..255, Background Removal apps: a colour background (a channel left out is 255)."


class GenerationRequest(BaseModel):
    """Fields shared by every diffusion route."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    app_id: str = Field(
        description="Which model to run; `GET apps` lists the valid ids.", min_length=1, max_length=64
    )
    prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description='What to generate. Default: the app\'s default prompt ("a beautiful painting").',
    )
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="What to avoid.")
    height: int | None = Field(
        None, ge=256, le=1536, multiple_of=64, description="Pixels, 256..1536, multiple of 64; an app may tighten it."
    )
    width: int | None = Field(
        None, ge=256, le=1536, multiple_of=64, description="Pixels, 256..1536, multiple of 64; an app may tighten it."
    )
    num_inference_steps: int | None = Field(None, ge=1, le=50, description="Denoising steps, 1..50.")
    guidance_scale: float | None = Field(None, ge=1, le=30, description="Classifier-free guidance, 1..30, default 7.5.")
    batch: int = Field(1, ge=1, le=8, description="Images to generate, 1..8 (an app may cap it lower).")
    celery: Flag = Field(False, description="true: queue the job and return a task_id at once.")
    reference_id: str | None = Field(
        None, min_length=1, max_length=200, description="Your own id for an async task; status lookups accept it as refID."
    )
    priority: int | None = Field(
        None, ge=0, le=9, description="Async tasks: 0..9, higher runs first among your own queued tasks; default 5."
    )
    inference_type: GpuType | None = Field(
        None, description="GPU type to run on: a10g, a100 or h100; default: the app's first."
    )
    # Seed-002 extra generation options.
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="0..2^32-1; null: random. Image i uses seed + i; `meta.seeds` returns them."
    )
    scheduler: SchedulerName | None = Field(
        None, description="A diffusers scheduler class name; one that cannot run here is a 422 listing those that can."
    )
    use_karras_sigmas: Flag | None = Field(None, description="Karras sigmas, for schedulers that support them.")
    algorithm_type: str | None = Field(
        None, max_length=32, description="DPMSolver algorithm: dpmsolver++, sde-dpmsolver++, dpmsolver, sde-dpmsolver."
    )
    clip_skip: int | None = Field(None, ge=1, le=8, description="CLIP layers to skip, 1..8.")
    lora_model: str | None = Field(
        None, max_length=1000, description="Comma-separated LoRA names (at most 5) from the app's list in `GET apps`."
    )
    lora_strength: Annotated[str, StringConstraints(max_length=200)] | Annotated[float, Field(ge=0.1, le=1)] | None = Field(
        None, description="Comma-separated strengths 0.1..1 (or one number): one per LoRA, or one for all; default 1."
    )
    vae: str | None = Field(None, max_length=200, description="A VAE by name, from the app's list in `GET apps`.")
    tomesd: Flag | None = Field(None, description="Token merging (tomesd): faster, slightly different images; default false.")
    safety_checker: Flag | None = Field(
        None, description="Run the NSFW checker on the outputs; flagged images are treated and `meta.nsfw` says which."
    )
    safety_checker_type: SafetyTreatment | None = Field(
        None, description="What the checker does to flagged images; default sensitive_content_text."
    )
    base64: Flag = Field(False, description="true: return images inline as data: URIs instead of URLs.")
    enhance_prompt: Flag | None = Field(
        None, description="true: the configured chat model rewrites `prompt` before generation; "
        "`meta.enhanced_prompt` returns what was used. Default false.",
    )
    webhook: str | None = Field(
        None, max_length=2048, description="Async tasks: http(s) URL POSTed the final envelope, signed (Standard Webhooks)."
    )
    track_id: str | None = Field(None, max_length=200, description="Echoed as `track_id` in the webhook call.")


class TextToImageRequest(GenerationRequest):
    """Body of ``POST getTextToImage``."""


class ImageToImageRequest(GenerationRequest):
    """Body of ``POST getImageToImage``: image-to-image and inpainting apps."""

    image: str | None = Field(
        None,
        validation_alias=AliasChoices("image", "file_url"),
        max_length=30_000_000,
        description="Reference image: http(s) URL, data: URI or bare base64 (alias: file_url). "
        "Larger than 1536x1536: resized to fit, aspect kept.",
    )
    strength: float | None = Field(
        None, ge=0, le=1, description="Image-to-image strength 0..1 (1 ignores the input image), default 0.7."
    )
    return_control_image: Flag = Field(
        False, description="ControlNet and Illusion apps: add the control image to `output` (last; `meta.control_image`)."
    )
    mask_url: str | None = Field(
        None,
        max_length=30_000_000,
        description="Inpainting mask (white: repaint, black: keep): URL, data: URI or base64; resized to the image.",
    )
    # Face Avatar (seed 000).
    gender: Gender | None = Field(
        None, description="Face Avatar apps: fills the default prompt's {gender_word} (man, woman, person); default neutral."
    )
    remove_background: bool | None = Field(
        None, description="Face Avatar apps: a transparent PNG (the background removed from the generated image)."
    )
    # Background Removal (seed 000); bg_color also on Face Avatar apps.
    bg_color: ColorOrFlag | None = Field(
        None, description="Background Removal apps: true to put r_color/g_color/b_color behind the subject (or a hex "
        "colour such as #FFFFFF); Face Avatar apps: a hex colour for the background.",
    )
    bg_image: str | None = Field(
        None, max_length=30_000_000,
        description="Background Removal apps: a picture to put behind the subject (URL, data: URI or base64); "
        "it covers the image, centred.",
    )
    r_color: int | None = Field(None, ge=0, le=255, description="Red " + _CHANNEL)
    g_color: int | None = Field(None, ge=0, le=255, description="Green " + _CHANNEL)
    b_color: int | None = Field(None, ge=0, le=255, description="Blue " + _CHANNEL)
    blur: bool | None = Field(None, description="Background Removal apps: blur the image's own background instead.")
    # Upscaling.
    scale: UpscaleFactor | None = Field(
        None, description="Upscaling apps: 2, 4 or 8 (Stable Diffusion x4 apps: 4); default the app's (4)."
    )
