"""The app registry: the one place that says what each ``app_id`` is.

``serve_config.yaml`` carries it as the builder's ``args``; :class:`ServiceConfig`
validates it. Each app names a model family, the GPU types it is deployed on
(default first), its limits and its defaults. One family deployment exists per
(family, GPU type) that some app uses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deployments.catalog import AVATAR_PROMPT, KINDS, TASKS, GpuType, Preprocessor, UpscaleFactor, route_tasks


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(_Strict):
    """An inclusive integer or float range."""

    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class AppLimits(_Strict):
    """Per-app bounds, tighter than (or equal to) the contract's."""

    height: Range = Range(min=256, max=1536)
    width: Range = Range(min=256, max=1536)
    batch_max: int = Field(8, ge=1, le=8)
    steps_max: int = Field(50, ge=1, le=50)
    task_deadline_seconds: float | None = Field(
        None, ge=1, description="Async tasks of this app fail with Timeout this long after submit "
        "(default: STUDIO_TASK_DEADLINE_SECONDS).",
    )


class AppDefaults(_Strict):
    """Values used when a request leaves a field out."""

    height: int = Field(512, ge=256, le=1536, multiple_of=64)
    width: int = Field(512, ge=256, le=1536, multiple_of=64)
    num_inference_steps: int = Field(30, ge=1, le=50)
    guidance_scale: float = Field(7.5, ge=1, le=30)
    strength: float = Field(0.7, ge=0, le=1)
    prompt: str = "a beautiful painting"
    safety_checker: bool = Field(False, description="Whether requests that leave `safety_checker` out are checked.")
    scale: UpscaleFactor = Field(4, description="Upscaling apps: the factor when a request leaves `scale` out.")


class ModelSource(_Strict):
    """Where a family's weights come from: a local directory or a hub id.

    ``path`` relative to the registry's ``models_dir`` (or absolute); ``hub_id``
    is passed to ``from_pretrained`` as is.
    """

    path: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("give exactly one of `path` or `hub_id`")
        return self

    def resolve(self, models_dir: Path) -> str:
        if self.hub_id is not None:
            return self.hub_id
        path = Path(os.path.expandvars(self.path or ""))
        return str(path if path.is_absolute() else (models_dir / path).resolve())


class DeploymentOptions(_Strict):
    """Ray Serve deployment options for one family deployment (or the ingress)."""

    num_replicas: int | None = Field(None, ge=1)
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int = Field(2, ge=1)
    max_queued_requests: int = Field(16, ge=-1)
    health_check_period_s: float = Field(10, gt=0)
    health_check_timeout_s: float = Field(30, gt=0)
    graceful_shutdown_timeout_s: float = Field(20, ge=0)

    @model_validator(mode="after")
    def _scaling(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give `num_replicas` or `autoscaling_config`, not both")
        if self.autoscaling_config is not None:
            from ray.serve.config import AutoscalingConfig

            unknown = sorted(set(self.autoscaling_config) - set(AutoscalingConfig.model_fields))
            if unknown:
                raise ValueError(f"autoscaling_config: unknown option(s) {', '.join(unknown)}; Serve's are "
                                 f"{', '.join(sorted(AutoscalingConfig.model_fields))}")
            try:  # Serve's own model: min/max replicas, target_ongoing_requests, delays, policy
                AutoscalingConfig(**self.autoscaling_config)
            except Exception as exc:  # pydantic's message names the field and its bound
                raise ValueError(f"autoscaling_config: {exc}") from None
        return self

    def serve_options(self) -> dict[str, Any]:
        options = self.model_dump(exclude_none=True)
        if "num_replicas" not in options and "autoscaling_config" not in options:
            options["num_replicas"] = 1
        return options


class GpuPool(_Strict):
    """How a GPU type is requested from Ray: its custom resource and GPU count."""

    resources: dict[str, float]
    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(0, ge=0)

    def actor_options(self) -> dict[str, Any]:
        return {"resources": dict(self.resources), "num_gpus": self.num_gpus, "num_cpus": self.num_cpus}


class ControlPool(_Strict):
    """How the ingress and the coordinator are placed: a custom resource of a CPU pool, if any."""

    resources: dict[str, float] = Field(default_factory=dict)
    num_cpus: float = Field(0, ge=0)

    def actor_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.resources:
            options["resources"] = dict(self.resources)
        return options


class ControlNetConfig(_Strict):
    """A ControlNet of a family, and how its control image is made from ``image``."""

    model: ModelSource
    preprocessor: Preprocessor = Field(description="canny edges, a depth map, a pose skeleton, or the image as is")


class TokenMerging(_Strict):
    """tomesd settings when a request sends ``tomesd: true``."""

    ratio: float = Field(0.5, gt=0, le=0.75)
    max_downsample: Literal[1, 2, 4, 8] = Field(1, description="1 (tomesd's advice) merges only at full resolution.")


class FamilyComponents(_Strict):
    """Extra weights a diffusion family loads beside its base; each enables tasks or options."""

    controlnets: dict[str, ControlNetConfig] = Field(default_factory=dict)
    depth_estimator: ModelSource | None = None
    pose_estimator: ModelSource | None = None
    ip_adapter: ModelSource | None = Field(None, description="An IP-Adapter directory (h94 layout) for variations.")
    loras: ModelSource | None = Field(None, description="A directory of <name>.safetensors LoRAs.")
    vaes: ModelSource | None = Field(None, description="A directory of named VAEs (<name>/config.json).")
    safety_checker: ModelSource | None = None
    face_analysis: ModelSource | None = Field(
        None, description="An insightface model pack directory (detection + recognition ONNX) for face tasks.")
    face_adapter: ModelSource | None = Field(
        None, description="An IP-Adapter FaceID directory (h94/IP-Adapter-FaceID layout) for face tasks.")
    token_merging: TokenMerging = Field(default_factory=lambda: TokenMerging())

    def resolve(self, models_dir: Path) -> dict[str, Any]:
        """Plain paths for the family deployment's constructor."""
        out: dict[str, Any] = {
            "controlnets": {name: {"path": c.model.resolve(models_dir), "preprocessor": c.preprocessor}
                            for name, c in self.controlnets.items()},
            "token_merging": self.token_merging.model_dump(),
        }
        for name in ("depth_estimator", "pose_estimator", "ip_adapter", "loras", "vaes", "safety_checker",
                     "face_analysis", "face_adapter"):
            source = getattr(self, name)
            out[name] = source.resolve(models_dir) if source is not None else None
        return out


class FamilyConfig(_Strict):
    """One set of weights served by one kind of family deployment."""

    kind: str = Field("diffusion", description="The family kind (deployments.catalog.KINDS).")
    model: ModelSource
    max_side: int = Field(
        1536, ge=64, le=8192, description="Largest image side the family's replicas accept (checked again there)."
    )
    stall_seconds: float = Field(
        300, gt=0, description="A generation that finishes no step for this long fails the replica's health check."
    )
    components: FamilyComponents = FamilyComponents()
    helpers: dict[str, str] = Field(
        default_factory=dict,
        description="Families this one calls by Serve handle, by kind (e.g. `{matting: rembg}`: subject masks "
        "for Replace Background and Face Avatar). The call goes to the helper's deployment on the same GPU type "
        "when it has one, else to its first.",
    )
    max_output_pixels: int = Field(
        4096 * 4096, ge=64 * 64, le=16384 * 16384,
        description="Upscaling families: the largest output (width x height) a job may ask for; more is a 422.",
    )
    tile: int = Field(256, ge=32, le=4096, description="Upscaling families: tile side (input pixels) per model call.")
    tile_overlap: int = Field(16, ge=0, le=256, description="Upscaling families: context pixels around each tile.")
    voice_aliases: dict[str, str] = Field(
        default_factory=dict, description="`tts` families: other voice ids (e.g. ElevenLabs' that clients send) that "
        "name this voice or one of its speakers.")
    max_new_tokens: int = Field(1024, ge=1, le=32768, description="`llm` families: reply tokens per call at most.")
    max_batch_size: int = Field(32, ge=1, le=1024, description="`embedder` families: texts encoded together at most.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=5, description="`embedder` families: how long a batch waits "
                                        "to fill.")
    deployment: DeploymentOptions = DeploymentOptions()
    #: Per-GPU-type overrides of ``deployment`` (e.g. more replicas on a100).
    per_gpu: dict[GpuType, DeploymentOptions] = Field(default_factory=dict)

    def options_for(self, gpu: GpuType) -> DeploymentOptions:
        return self.per_gpu.get(gpu, self.deployment)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown family kind {kind!r}; use one of {', '.join(KINDS)}")
        return kind


class AppConfig(_Strict):
    """One public ``app_id``."""

    app_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    name: str
    family: str
    task: str = Field(description="What the app does (deployments.catalog.TASKS).")
    control: str | None = Field(None, description="ControlNet tasks: which of the family's controlnets.")
    inference_types: list[GpuType] = Field(min_length=1)
    limits: AppLimits = AppLimits()
    defaults: AppDefaults = AppDefaults()

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
        return task

    @model_validator(mode="after")
    def _consistent(self) -> AppConfig:
        if len(set(self.inference_types)) != len(self.inference_types):
            raise ValueError(f"{self.app_id}: inference_types has duplicates")
        d, lim = self.defaults, self.limits
        for side in ("height", "width"):
            value, rng = getattr(d, side), getattr(lim, side)
            if not rng.min <= value <= rng.max:
                raise ValueError(f"{self.app_id}: default {side} {value} is outside its limits")
        if d.num_inference_steps > lim.steps_max:
            raise ValueError(f"{self.app_id}: default steps exceed steps_max")
        if self.task == "avatar" and "prompt" not in d.model_fields_set:  # seed 000's avatar prompt
            object.__setattr__(self, "defaults", d.model_copy(update={"prompt": AVATAR_PROMPT}))
        return self

    @property
    def default_gpu(self) -> str:
        return self.inference_types[0]

    def public(self) -> dict[str, Any]:
        """What ``GET apps`` shows: no model paths, no deployment internals."""
        return {
            "app_id": self.app_id,
            "name": self.name,
            "family": self.family,
            "task": self.task,
            "summary": TASKS[self.task].summary,
            "strength": TASKS[self.task].strength,
            "inputs": [i.field for i in TASKS[self.task].inputs],
            "options": list(TASKS[self.task].options),
            "refused_fields": list(TASKS[self.task].refuses) + (["strength"] if TASKS[self.task].strength is None else []),
            "routes": [r for r, tasks in route_tasks().items() if self.task in tasks],
            "inference_types": list(self.inference_types),
            "default_inference_type": self.default_gpu,
            "limits": self.limits.model_dump(),
            "defaults": self.defaults.model_dump(),
        }


ChatProviderName = Literal["OpenAI", "ClaudeAI", "MistralAI", "GeminiAI", "Local"]


class ProviderConfig(_Strict):
    """One value of the chat API's ``llm``: the models it allows (``llm_model``)."""

    models: list[str] = Field(min_length=1, description="The `llm_model` values this provider accepts.")
    vision_models: list[str] = Field(default_factory=list, description="Those of `models` that read images.")
    default_model: str | None = Field(None, description="The model when a request leaves `llm_model` out "
                                      "(default: the first of `models`).")
    family: str | None = Field(None, description="`Local` only: the `llm` family that serves it.")
    inference_type: GpuType | None = Field(None, description="`Local` only: the GPU type of that family's deployment.")
    max_image_side: int | None = Field(None, ge=64, le=8192, description="Longest image side sent to this provider "
                                       "(images are shrunk while decoding); default: the vendor's own "
                                       "(`ingress.chat_jobs.PROVIDER_IMAGE_SIDE`).")

    @model_validator(mode="after")
    def _consistent(self) -> ProviderConfig:
        if self.default_model is not None and self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of models")
        unknown = sorted(set(self.vision_models) - set(self.models))
        if unknown:
            raise ValueError(f"vision_models {', '.join(unknown)} are not in models")
        if (self.family is None) != (self.inference_type is None):
            raise ValueError("give `family` and `inference_type` together (the Local provider)")
        return self

    @property
    def default(self) -> str:
        return self.default_model or self.models[0]


class PromptEnhancement(_Strict):
    """``enhance_prompt`` on the diffusion apps: which chat model rewrites the prompt, and how."""

    llm: ChatProviderName
    llm_model: str
    system: str = Field(
        "Rewrite the user's image prompt into one richer prompt for a text-to-image model: keep the subject and "
        "intent, add concrete detail about composition, lighting and style. Answer with the prompt only, "
        "no quotes, under 60 words.",
        max_length=4000,
    )
    max_tokens: int = Field(120, ge=8, le=1024)
    temperature: float = Field(0.7, ge=0, le=1)
    timeout_seconds: float = Field(30, gt=0, le=300)


class ChatConfig(_Strict):
    """The chat API (``chat``, ``streamChat``): providers, bounds, tools, prompt enhancement."""

    providers: dict[ChatProviderName, ProviderConfig]
    max_tokens_default: int = Field(1024, ge=1, le=32768, description="Reply tokens when a request leaves "
                                    "`max_tokens` out.")
    max_tokens_max: int = Field(4096, ge=1, le=32768)
    web_results: int = Field(5, ge=1, le=10, description="InternetSearch: results given to the model.")
    timeout_seconds: float = Field(120, gt=0, le=900, description="A chat call (all of it) that takes longer is a 504.")
    enhance_prompt: PromptEnhancement | None = None
    deployment: DeploymentOptions = DeploymentOptions(max_ongoing_requests=64, max_queued_requests=256)

    @model_validator(mode="after")
    def _consistent(self) -> ChatConfig:
        if self.max_tokens_default > self.max_tokens_max:
            raise ValueError("max_tokens_default exceeds max_tokens_max")
        if "Local" in self.providers and self.providers["Local"].family is None:
            raise ValueError("providers.Local needs `family` (an llm family) and `inference_type`")
        for name, provider in self.providers.items():
            if name != "Local" and provider.family is not None:
                raise ValueError(f"providers.{name}: only Local is served by a family")
        if (e := self.enhance_prompt) is not None:
            if e.llm not in self.providers or e.llm_model not in self.providers[e.llm].models:
                raise ValueError(f"enhance_prompt: {e.llm}/{e.llm_model} is not a configured provider model")
        return self


class TenantDocumentLimits(_Strict):
    """One tenant's own document caps and retention (unset: the defaults of ``documents.limits``)."""

    max_documents_per_tenant: int | None = Field(None, ge=1, le=10_000_000)
    max_chunks_per_tenant: int | None = Field(None, ge=1, le=1_000_000_000)
    retention_days: float | None = Field(None, gt=0, le=36_500)


class DocumentLimits(_Strict):
    """``pdfVectorStore``'s bounds (each a 422 naming it when passed), the per-tenant caps and the
    retention of stored documents (see ``deployments.documents.service``)."""

    max_bytes: int = Field(50 * 1024 * 1024, ge=1024, le=1024**3, description="Largest PDF fetched.")
    max_pages: int = Field(500, ge=1, le=100_000)
    max_chars: int = Field(2_000_000, ge=1000, le=100_000_000, description="Text extracted from one PDF.")
    parse_seconds: float = Field(60, gt=0, le=3600, description="Time to extract a PDF's text.")
    memory_bytes: int = Field(1024**3, ge=64 * 1024**2, description="Memory of the PDF parsing process.")
    chunk_chars: int = Field(1000, ge=100, le=20000)
    chunk_overlap: int = Field(200, ge=0, le=5000)
    max_chunks: int = Field(5000, ge=1, le=1_000_000)
    max_query_chars: int = Field(2000, ge=1, le=100_000)
    max_results: int = Field(20, ge=1, le=100)
    max_documents_per_tenant: int = Field(1000, ge=1, le=10_000_000, description="Documents one tenant may hold; "
                                          "a store past it is a 422 before its PDF is parsed.")
    max_chunks_per_tenant: int = Field(200_000, ge=1, le=1_000_000_000, description="Text chunks (vectors) one tenant "
                                       "may hold; a store past it is a 422 after chunking, before embedding.")
    retention_days: float = Field(30, gt=0, le=36_500, description="Documents older than this are hidden at once "
                                  "and their vectors deleted by the documents replica's sweep.")
    sweep_seconds: float = Field(3600, ge=1, le=86_400, description="How often the documents replica deletes "
                                 "expired documents.")
    pending_seconds: float = Field(3600, ge=60, le=7 * 86_400, description="A store's reservation left unfinished "
                                   "this long (its replica died) is reclaimed by the sweep.")
    tenants: dict[str, TenantDocumentLimits] = Field(
        default_factory=dict, description="Per-tenant overrides of the caps and the retention, by tenant name.")

    @model_validator(mode="after")
    def _overlap(self) -> DocumentLimits:
        if self.chunk_overlap > self.chunk_chars // 2:
            raise ValueError("chunk_overlap must be at most half of chunk_chars")
        if any(not name or len(name) > 256 for name in self.tenants):
            raise ValueError("tenants: a tenant name has 1..256 characters")
        return self


class DocumentsConfig(_Strict):
    """The document store (``pdfVectorStore``, DBSearch): the embedder family and Qdrant.

    ``qdrant_path``: Qdrant's local mode on disk, opened by exactly one replica of the documents
    deployment (local mode is single-process). ``qdrant_url``: a Qdrant server; any number of replicas.
    """

    embedder: str = Field(description="The `embedder` family.")
    inference_type: GpuType = Field(description="The GPU type of the embedder's deployment.")
    qdrant_path: str | None = Field(None, description="Local mode: a directory (env vars expanded).")
    qdrant_url: str | None = Field(None, description="A Qdrant server (key: STUDIO_QDRANT_API_KEY).")
    collection: str = Field("studio_documents", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    limits: DocumentLimits = DocumentLimits()
    deployment: DeploymentOptions = DeploymentOptions(max_ongoing_requests=8, max_queued_requests=64)

    @model_validator(mode="after")
    def _one_qdrant(self) -> DocumentsConfig:
        if (self.qdrant_path is None) == (self.qdrant_url is None):
            raise ValueError("give exactly one of `qdrant_path` (local mode) or `qdrant_url` (a server)")
        replicas = self.deployment.num_replicas or 1
        if self.qdrant_path is not None and (self.deployment.autoscaling_config is not None or replicas != 1):
            raise ValueError("Qdrant's local mode is single-process: the documents deployment takes exactly "
                             "one replica (use `qdrant_url` to scale)")
        return self

    def qdrant_args(self) -> dict[str, Any]:
        if self.qdrant_path is not None:
            return {"qdrant_path": os.path.expandvars(self.qdrant_path)}
        return {"qdrant_url": self.qdrant_url}


class IngressOptions(DeploymentOptions):
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(256, ge=-1)


class ServiceConfig(_Strict):
    """The builder's ``args``: GPU pools, families, apps, ingress options."""

    models_dir: str = Field(
        "${STUDIO_MODELS_DIR}",
        description="Base directory for relative model paths (env vars expanded).",
    )
    gpu_pools: dict[GpuType, GpuPool]
    families: dict[str, FamilyConfig]
    apps: list[AppConfig] = Field(min_length=1)
    chat: ChatConfig | None = Field(None, description="The chat API; none: `chat` and `streamChat` answer 404.")
    documents: DocumentsConfig | None = Field(None, description="The document store; none: `pdfVectorStore` "
                                              "answers 404 and DBSearch is refused.")
    ingress: IngressOptions = IngressOptions()
    control_pool: ControlPool = Field(
        default_factory=lambda: ControlPool(),
        description="Where the ingress and the task coordinator run (e.g. a CPU node group's custom resource).",
    )

    @model_validator(mode="after")
    def _references(self) -> ServiceConfig:
        for name in self.families:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"family name {name!r}: use letters, digits, '-' and '_' only")
        seen: set[str] = set()
        for app in self.apps:
            if app.app_id in seen:
                raise ValueError(f"duplicate app_id {app.app_id}")
            seen.add(app.app_id)
            if app.family not in self.families:
                raise ValueError(f"app {app.app_id}: unknown family {app.family!r}")
            kind = self.families[app.family].kind
            if TASKS[app.task].kind != kind:
                raise ValueError(f"app {app.app_id}: task {app.task} runs on {TASKS[app.task].kind} families, "
                                 f"not on family {app.family} ({kind})")
            side = self.families[app.family].max_side
            if max(app.limits.height.max, app.limits.width.max) > side:
                raise ValueError(f"app {app.app_id}: its size limits exceed family {app.family}'s max_side {side}")
            _check_components(app, self.families[app.family].components)
            self._check_helpers(app)
            for gpu in app.inference_types:
                if gpu not in self.gpu_pools:
                    raise ValueError(f"app {app.app_id}: GPU type {gpu!r} has no gpu_pools entry")
            if not KINDS[kind].serves_tasks:
                raise ValueError(f"app {app.app_id}: {kind} families serve no app")
        for where, family, service_gpu, kind in self._service_families():
            if family not in self.families or self.families[family].kind != kind:
                raise ValueError(f"{where}: must name a {kind} family, not {family!r}")
            if service_gpu not in self.gpu_pools:
                raise ValueError(f"{where}: GPU type {service_gpu!r} has no gpu_pools entry")
        return self

    def _service_families(self) -> list[tuple[str, str, GpuType, str]]:
        """(where, family, GPU type, kind) of the families the chat API and the document store use."""
        out: list[tuple[str, str, GpuType, str]] = []
        if self.documents is not None:
            out.append(("documents.embedder", self.documents.embedder, self.documents.inference_type, "embedder"))
        if self.chat is not None and (local := self.chat.providers.get("Local")) is not None:
            assert local.family is not None and local.inference_type is not None  # ChatConfig checks
            out.append(("chat.providers.Local.family", local.family, local.inference_type, "llm"))
        return out

    def _check_helpers(self, app: AppConfig) -> None:
        """A task that calls another family kind needs its family to name a deployed family of that kind."""
        family = self.families[app.family]
        for kind in TASKS[app.task].helpers:
            helper = family.helpers.get(kind)
            if helper is None:
                raise ValueError(f"app {app.app_id}: task {app.task} needs family {app.family}'s helpers.{kind} "
                                 f"naming a {kind} family")
            if helper not in self.families or self.families[helper].kind != kind:
                raise ValueError(f"app {app.app_id}: helpers.{kind} of family {app.family} must name a {kind} family, "
                                 f"not {helper!r}")
            if self.families[helper].helpers:
                raise ValueError(f"family {helper}: a helper family cannot call helpers of its own")
            if not any(a.family == helper for a in self.apps):
                raise ValueError(f"app {app.app_id}: helper family {helper} has no app, so it is not deployed")

    def helper_deployments(self, family: str, gpu: str) -> dict[str, tuple[str, str]]:
        """The (family, GPU type) each helper kind of ``family`` is called on from its ``gpu`` deployment."""
        keys = self.deployment_keys()
        out: dict[str, tuple[str, str]] = {}
        for kind, helper in self.families[family].helpers.items():
            gpus = [g for f, g in keys if f == helper]
            if gpus:
                out[kind] = (helper, gpu if gpu in gpus else gpus[0])
        return out

    def models_path(self) -> Path:
        raw = os.path.expandvars(self.models_dir)
        if "$" in raw:
            raw = ".models"
        return Path(raw).expanduser().resolve()

    def family_tasks(self, family: str) -> tuple[list[str], dict[str, list[str]]]:
        """The tasks a family's apps use, and per task the controls (ControlNets) they name."""
        tasks: list[str] = []
        controls: dict[str, list[str]] = {}
        for app in self.apps:
            if app.family != family:
                continue
            if app.task not in tasks:
                tasks.append(app.task)
            if app.control is not None and app.control not in controls.setdefault(app.task, []):
                controls[app.task].append(app.control)
        return tasks, controls

    def deployment_keys(self) -> list[tuple[str, GpuType]]:
        """Every (family, GPU type) some app, the chat API or the document store uses, in registry order."""
        keys: list[tuple[str, GpuType]] = []
        for app in self.apps:
            for gpu in app.inference_types:
                if (app.family, gpu) not in keys:
                    keys.append((app.family, gpu))
        for _, family, service_gpu, _ in self._service_families():
            if (family, service_gpu) not in keys:
                keys.append((family, service_gpu))
        return keys


def _check_components(app: AppConfig, components: FamilyComponents) -> None:
    """An app's task and ``control`` must name weights its family has."""
    spec = TASKS[app.task]
    if spec.component == "controlnet":
        if app.control is None or app.control not in components.controlnets:
            raise ValueError(f"app {app.app_id}: task {app.task} needs `control` naming one of its family's "
                             f"controlnets ({', '.join(components.controlnets) or 'none configured'})")
        pre = components.controlnets[app.control].preprocessor
        need = {"depth": "depth_estimator", "openpose": "pose_estimator"}.get(pre)
        if need and getattr(components, need) is None:
            raise ValueError(f"app {app.app_id}: preprocessor {pre} needs the family's {need}")
    elif app.control is not None:
        raise ValueError(f"app {app.app_id}: `control` is only for ControlNet tasks")
    if spec.component == "ip_adapter" and components.ip_adapter is None:
        raise ValueError(f"app {app.app_id}: task {app.task} needs the family's ip_adapter")
    if spec.component == "face_id" and (components.face_analysis is None or components.face_adapter is None):
        raise ValueError(f"app {app.app_id}: task {app.task} needs the family's face_analysis and face_adapter")
    if app.defaults.safety_checker and components.safety_checker is None:
        raise ValueError(f"app {app.app_id}: defaults.safety_checker needs the family's safety_checker")


class Registry:
    """Lookups the ingress does per request."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.apps: dict[str, AppConfig] = {a.app_id: a for a in config.apps}

    def app(self, app_id: str) -> AppConfig | None:
        return self.apps.get(app_id)

    def app_ids(self) -> list[str]:
        return list(self.apps)

    def public(self) -> list[dict[str, Any]]:
        return [a.public() for a in self.config.apps]
