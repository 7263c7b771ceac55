"""The task table: every task an app can do, and every family kind that runs them.

One table, read by the registry (which tasks and kinds a config may name), the
contract's validation (which route serves a task, which inputs it takes), job
building (which inputs to fetch), the builder (which class serves a kind) and the
tiny-model maker (which tiny models a kind needs). Adding a family is one module
under ``deployments/families/``, one ``KindSpec`` and its ``TaskSpec`` rows here,
and registry entries in ``serve_config.yaml``.

Also the one definition of the literals the tree shares: GPU types, the seed
range, and a family deployment's name (task statuses live with the task records,
``storage/tasks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

GpuType = Literal["a10g", "a100", "h100"]
GPU_TYPES: tuple[str, ...] = get_args(GpuType)

#: How a ControlNet's control image is made from ``image`` (``deployments/families/controlnet.py``).
Preprocessor = Literal["canny", "depth", "openpose", "none"]

#: Seeds are 0..MAX_SEED (a request's ``seed``; a random base is drawn so that
#: ``base + i`` of a batch stays in range too).
MAX_SEED = 2**32 - 1

#: What a task's envelope ``output`` is: a list of image URLs, or one audio file's URL.
OutputKind = Literal["image", "audio"]

#: The generation fields of the diffusion routes (``GenerationRequest``) that a task may refuse
#: (``TaskSpec.refuses``): an app that cannot honour one answers 422 rather than ignore it.
DIFFUSION_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "height", "width", "num_inference_steps", "guidance_scale", "batch", "seed",
    "scheduler", "use_karras_sigmas", "algorithm_type", "clip_skip", "lora_model", "lora_strength", "vae", "tomesd",
    "safety_checker", "safety_checker_type", "enhance_prompt",
)
_SAMPLER_OPTIONS = ("scheduler", "use_karras_sigmas", "algorithm_type", "clip_skip", "lora_model", "lora_strength",
                    "vae", "tomesd", "safety_checker", "safety_checker_type")


@dataclass(frozen=True)
class InputSpec:
    """An input a task fetches: the request field (URL, data: URI or base64) and the
    job attribute it lands in, already decoded and sized."""

    field: str
    job_attr: str
    mode: Literal["RGB", "L"] = "RGB"
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """One thing an app can do."""

    name: str
    route: str
    kind: str
    summary: str
    output: OutputKind = "image"
    inputs: tuple[InputSpec, ...] = ()
    #: What ``strength`` means for this task (None: the task takes no strength).
    strength: str | None = None
    #: Request fields only this task accepts (beyond the route's common ones).
    options: tuple[str, ...] = ()
    #: The family component the task needs: ``controlnet`` (the app's ``control`` names
    #: one) or ``ip_adapter``.
    component: str | None = None
    #: The module that runs the task on a family replica (``module:Class``); None: the kind's own.
    handler: str | None = None
    #: Generation fields (``DIFFUSION_FIELDS``) the task cannot honour: a value other than the default is a 422.
    refuses: tuple[str, ...] = ()
    #: How the first input is sized: ``app`` — to the app's sizes (multiples of 64, the output's size);
    #: ``fit`` — kept as it is, only shrunk (aspect kept) to fit the app's largest sides.
    sizing: Literal["app", "fit"] = "app"
    #: Where the output size comes from: the (sized) input image, or the request / app defaults.
    output_size: Literal["input", "request"] = "input"
    #: The job type the family runs (``deployments.types.JOB_TYPES``).
    job: str = "ImageJob"
    #: Other family kinds a replica of this task calls by handle (``FamilyComponents.helpers``).
    helpers: tuple[str, ...] = ()


@dataclass(frozen=True)
class KindSpec:
    """One kind of family deployment: the class that serves it and the tasks it runs."""

    name: str
    deployment: str  # "module:Class", imported by the builder
    summary: str
    tiny_models: tuple[str, ...] = field(default=())
    #: False: the kind runs no app's task (no ``run``/``run_task``); it serves other deployments by handle.
    serves_tasks: bool = True
    #: False: the kind calls a vendor and needs no GPU: its replicas go on the control pool, whatever
    #: GPU type (``inference_type``) its app names.
    on_gpu: bool = True


_IMAGE = InputSpec("image", "image", doc="the reference image")
IMG2IMG_STRENGTH = "diffusers' img2img strength: 0 keeps the input, 1 ignores it"
_CONDITIONING = "how strongly the control image conditions the result: the ControlNet conditioning scale (0..1)"
_ILLUSION = "how strongly the pattern shows: ControlNet conditioning scale 0.8 + 1.2 x strength (0.8..2.0)"
_VARIATION = "how closely the variation follows the image: the IP-Adapter scale (0..1)"
#: Face Avatar's default prompt (seed 000); ``{gender_word}`` comes from ``gender`` (GENDER_WORDS).
AVATAR_PROMPT = (
    "black plain background, VECTOR CARTOON ILLUSTRATION, half-body shot portrait {gender_word}, 5 o clock shadow, "
    "3d bitmoji avatar render, pixar, high def textures 8k, highly detailed, 3d render, award winning, "
    "no background elements"
)
Gender = Literal["male", "female", "neutral"]
GENDER_WORDS: dict[str, str] = {"male": "man", "female": "woman", "neutral": "person"}
UpscaleFactor = Literal[2, 4, 8]
#: The factors each upscaling task makes.
TASK_SCALES: dict[str, tuple[int, ...]] = {"upscale": (2, 4, 8), "sd_upscale": (4,)}


def avatar_prompt(prompt: str | None, gender: str | None, template: str = AVATAR_PROMPT) -> str:
    """A Face Avatar prompt: a custom one as it is; none, ``template`` with ``{gender_word}`` filled."""
    if prompt is not None:
        return prompt
    return template.replace("{gender_word}", GENDER_WORDS[gender or "neutral"])


#: ElevenLabs voice settings a local voice (task ``tts``) has no control for: only these values (ElevenLabs'
#: defaults, what clients copying the seed send) or null are accepted; anything else is a 422.
LOCAL_TTS_NEUTRAL: dict[str, float | bool] = {"similarity_boost": 0.75, "style": 0.0, "use_speaker_boost": True}

_IDENTITY = "how strongly the face's identity shows: the IP-Adapter FaceID scale (0..1)"
_FACE = InputSpec("image", "image", doc="a photo with a face (several: the largest is used)")
_UPSCALE_INPUT = InputSpec("image", "image", doc="the image to enlarge")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("text2img", "getTextToImage", "diffusion", "Text To Image"),
        TaskSpec("img2img", "getImageToImage", "diffusion", "Image To Image", inputs=(_IMAGE,),
                 strength=IMG2IMG_STRENGTH),
        TaskSpec(
            "inpaint", "getImageToImage", "diffusion", "Inpainting",
            inputs=(_IMAGE, InputSpec("mask_url", "mask", mode="L", doc="white = repaint, black = keep")),
            strength=IMG2IMG_STRENGTH,
        ),
        TaskSpec("controlnet", "getImageToImage", "diffusion", "ControlNet", inputs=(_IMAGE,),
                 strength=_CONDITIONING, options=("return_control_image",), component="controlnet",
                 handler="deployments.families.controlnet:ControlNetTask"),
        TaskSpec("illusion", "getImageToImage", "diffusion", "Illusion Diffusion",
                 inputs=(InputSpec("image", "image", doc="the pattern (e.g. a QR code or a spiral)"),),
                 strength=_ILLUSION, options=("return_control_image",), component="controlnet",
                 handler="deployments.families.illusion:IllusionTask"),
        TaskSpec("variation", "getImageToImage", "diffusion", "Image Variation", inputs=(_IMAGE,),
                 strength=_VARIATION, component="ip_adapter",
                 handler="deployments.families.variation:VariationTask"),
        TaskSpec("face", "getImageToImage", "diffusion", "Face Consistency", inputs=(_FACE,), strength=_IDENTITY,
                 component="face_id", handler="deployments.families.faces:FaceTask", sizing="fit",
                 output_size="request", refuses=("lora_model", "lora_strength")),
        TaskSpec("avatar", "getImageToImage", "diffusion", "Face Avatar", inputs=(_FACE,), strength=_IDENTITY,
                 options=("gender", "remove_background", "bg_color"), component="face_id",
                 handler="deployments.families.faces:AvatarTask", sizing="fit", output_size="request",
                 refuses=("lora_model", "lora_strength"), helpers=("matting",)),
        TaskSpec("replace_background", "getImageToImage", "diffusion", "Replace Background", inputs=(_IMAGE,),
                 handler="deployments.families.backgrounds:ReplaceBackgroundTask", helpers=("matting",)),
        TaskSpec("remove_background", "getImageToImage", "matting", "Background Removal",
                 inputs=(_IMAGE, InputSpec("bg_image", "bg_image", required=False,
                                           doc="a picture to put behind the subject (covers the image, centred)")),
                 options=("bg_color", "r_color", "g_color", "b_color", "blur"), refuses=DIFFUSION_FIELDS,
                 sizing="fit", job="MattingJob"),
        TaskSpec("upscale", "getImageToImage", "upscaler", "Upscaling", inputs=(_UPSCALE_INPUT,), options=("scale",),
                 refuses=DIFFUSION_FIELDS, sizing="fit", job="UpscaleJob"),
        TaskSpec("sd_upscale", "getImageToImage", "sd_upscaler", "Upscaling (Stable Diffusion x4)",
                 inputs=(_UPSCALE_INPUT,), options=("scale",), sizing="fit", job="UpscaleJob",
                 refuses=("height", "width", "batch", *_SAMPLER_OPTIONS)),
        TaskSpec("tts", "getTextToSpeech", "tts", "Text To Speech (local engine)", output="audio", job="SpeechJob"),
        TaskSpec("tts_elevenlabs", "getTextToSpeech", "tts_vendor", "Text To Speech (ElevenLabs)", output="audio",
                 job="SpeechJob"),
    )
}

KINDS: dict[str, KindSpec] = {
    spec.name: spec
    for spec in (
        KindSpec("diffusion", "deployments.families.diffusion:DiffusionFamily",
                 "Stable Diffusion 1.x/2.x and SDXL pipelines sharing one set of weights",
                 tiny_models=("tiny-sd15", "tiny-sdxl", "tiny-controlnet-sdxl-canny", "tiny-controlnet-sdxl-depth",
                              "tiny-controlnet-sdxl-openpose", "tiny-controlnet-sd15-qrcode", "tiny-depth", "tiny-pose",
                              "tiny-ip-adapter-sd15", "tiny-ip-adapter-sdxl", "tiny-loras-sd15", "tiny-loras-sdxl",
                              "tiny-vaes", "tiny-safety-checker", "tiny-face-pack", "tiny-faceid-sdxl")),
        KindSpec("matting", "deployments.families.matting:MattingFamily",
                 "salient-object segmentation (ONNX): background removal, and subject masks for other families",
                 tiny_models=("tiny-saliency",)),
        KindSpec("upscaler", "deployments.families.upscale:UpscalerFamily",
                 "ESRGAN-family upscalers loaded with spandrel, tiled", tiny_models=("tiny-esrgan-4x",)),
        KindSpec("sd_upscaler", "deployments.families.upscale:SDUpscalerFamily",
                 "the Stable Diffusion x4 upscaler pipeline", tiny_models=("tiny-sd-x4-upscaler",)),
        KindSpec("tts", "deployments.families.speech:LocalSpeechFamily",
                 "a local text-to-speech engine (piper voices, ONNX)", tiny_models=("tiny-piper-voice",)),
        KindSpec("tts_vendor", "deployments.families.speech:ElevenLabsSpeechFamily",
                 "ElevenLabs text to speech through its SDK", on_gpu=False),
        KindSpec("embedder", "deployments.families.embedding:EmbeddingFamily",
                 "sentence-transformers embeddings for the document store, batched by Serve",
                 tiny_models=("tiny-minilm",), serves_tasks=False),
        KindSpec("llm", "deployments.families.llm:LocalLLMFamily",
                 "a transformers causal LM: the chat API's Local provider, streamed", tiny_models=("tiny-chat-llm",),
                 serves_tasks=False),
    )
}


def route_output(route: str) -> OutputKind:
    """What a route's envelope ``output`` holds (every task of a route makes the same kind)."""
    return next((spec.output for spec in TASKS.values() if spec.route == route), "image")


def route_tasks() -> dict[str, tuple[str, ...]]:
    """Which tasks each public route serves, in table order."""
    routes: dict[str, tuple[str, ...]] = {}
    for spec in TASKS.values():
        routes[spec.route] = routes.get(spec.route, ()) + (spec.name,)
    return routes


def lora_stack_id(lora_model: str | None) -> str:
    """The multiplexed model id of a request's LoRA stack: its names, sorted ("" for none).
    Strengths are applied per call, so they are not part of it."""
    if not lora_model:
        return ""
    return ",".join(sorted({name.strip() for name in lora_model.split(",") if name.strip()}))


def deployment_name(family: str, gpu: str) -> str:
    """The Serve deployment that runs ``family`` on ``gpu``."""
    return f"{family}-{gpu}"
