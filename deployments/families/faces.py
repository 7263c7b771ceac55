"""Face Consistency and Face Avatar on an SDXL diffusion family: IP-Adapter FaceID.

The family's ``face_analysis`` component (an insightface model pack directory) finds the
face in ``image`` and embeds its identity (``deployments.pipelines.faces``); the
``face_adapter`` component (h94/IP-Adapter-FaceID's ``ip-adapter-faceid_sdxl.bin``) turns
that embedding into image-prompt tokens on the shared SDXL UNet, attached only for the
call (``deployments.pipelines.faceid``). ``strength`` (0..1) is the identity scale. The
output's size is the request's ``height``/``width`` (the app's defaults when absent), not
the reference photo's. Several faces: the largest is used, and the result's meta says so
(``{"face": {"bbox", "score", "faces_detected"}}``); no face: ``NoFaceDetected`` (422).

Both tasks share one loaded analyzer and adapter per family replica. Face Avatar's prompt
default (:func:`avatar_prompt`) and its background options are applied by the family.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from deployments.catalog import AVATAR_PROMPT, GENDER_WORDS, avatar_prompt
from deployments.errors import InvalidJobError
from deployments.types import ImageJob

if TYPE_CHECKING:
    from PIL import Image

    from deployments.loader import DiffusionPipelines
    from deployments.pipelines.faceid import FaceIDAdapter
    from deployments.pipelines.faces import FaceAnalyzer

__all__ = ["AVATAR_PROMPT", "GENDER_WORDS", "AvatarTask", "FaceTask", "avatar_prompt"]

MAX_SIDE = 1536  # the contract's largest side (deployments.families.diffusion.MAX_SIDE); a family may lower it

class _Loaded:
    """The analyzer and adapter the face tasks of one replica share."""

    def __init__(self, analyzer: FaceAnalyzer, adapter: FaceIDAdapter):
        self.analyzer = analyzer
        self.adapter = adapter


# Per (shared UNet, component directories), while a task holds it: Face and Avatar load once.
_LOADED: weakref.WeakValueDictionary[tuple[int, str, str], _Loaded] = weakref.WeakValueDictionary()
_LOAD_LOCK = threading.Lock()


def _load(pipelines: DiffusionPipelines, analysis_dir: str, adapter_dir: str) -> _Loaded:
    from deployments.pipelines.faceid import load_face_adapter
    from deployments.pipelines.faces import FaceAnalyzer

    key = (id(pipelines.text2img.unet), analysis_dir, adapter_dir)  # the entry keeps the UNet alive: ids stay unique
    with _LOAD_LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            analyzer = FaceAnalyzer.load(analysis_dir)
            adapter = load_face_adapter(pipelines.text2img, adapter_dir)
            dim = analyzer.embedding_dim
            if dim is not None and dim != adapter.embed_dim:
                raise ValueError(f"the face recognizer gives {dim}-d embeddings; the FaceID adapter takes {adapter.embed_dim}")
            loaded = _LOADED[key] = _Loaded(analyzer, adapter)
        return loaded


class FaceTask:
    """Face Consistency: the reference face's identity on a prompt-driven SDXL picture."""

    def __init__(self, pipelines: DiffusionPipelines, components: dict[str, Any], controls: list[str]):
        if pipelines.kind != "sdxl":
            raise ValueError(f"face tasks run on an SDXL family (IP-Adapter FaceID SDXL); this family is {pipelines.kind!r}")
        missing = [name for name in ("face_analysis", "face_adapter") if not components.get(name)]
        if missing:
            raise ValueError(f"face tasks need the family components {', '.join(missing)}")
        self.pipelines = pipelines
        self.max_side = MAX_SIDE
        self._loaded = _load(pipelines, str(components["face_analysis"]), str(components["face_adapter"]))
        self.analyzer = self._loaded.analyzer
        self.adapter = self._loaded.adapter

    def all_pipelines(self) -> list[Any]:
        return [self.adapter.pipe]

    def check(self, job: ImageJob) -> None:
        if job.image is None:
            raise InvalidJobError("image", f"{job.task} needs an input image with a face")
        if not 0.0 <= job.strength <= 1.0:
            raise InvalidJobError("strength", f"strength is the identity scale; allowed: 0..1 (got {job.strength})")
        factor = self.pipelines.vae_scale_factor
        for name in ("height", "width"):
            value = getattr(job, name)
            if value is not None and (value < factor or value % factor or value > self.max_side):
                raise InvalidJobError(name, f"allowed: a multiple of {factor} from {factor} to {self.max_side} (got {value})")

    def output_size(self, job: ImageJob) -> tuple[int, int]:
        """``(width, height)`` of the output: the request's, else the model's defaults."""
        return job.width or self.pipelines.default_width, job.height or self.pipelines.default_height

    @contextmanager
    def call(self, job: ImageJob) -> Iterator[tuple[Any, dict[str, Any], list[Image.Image], dict[str, Any]]]:
        """Find the face (model code, on the replica), then yield the adapter-attached pipeline,
        its kwargs (identity embeddings, output size), no extra images, and the face's meta."""
        from deployments.pipelines.ip_adapter import ip_adapter_scale

        face = self.analyzer.largest(job.input_image().convert("RGB"))
        width, height = self.output_size(job)
        with self.adapter.attached() as pipe:
            pipe.set_ip_adapter_scale(ip_adapter_scale(job.strength))
            kwargs = {
                "ip_adapter_image_embeds": self.adapter.image_embeds(face.embedding, job.guidance_scale),
                "height": height,
                "width": width,
            }
            yield pipe, kwargs, [], {"face": face.meta()}


class AvatarTask(FaceTask):
    """Face Avatar: the same identity path; the family fills the avatar prompt
    (:func:`avatar_prompt`) and applies the background options."""

    def check(self, job: ImageJob) -> None:
        super().check(job)
        if job.gender is not None and job.gender not in GENDER_WORDS:
            raise InvalidJobError("gender", f"allowed: one of {', '.join(GENDER_WORDS)} (got {str(job.gender)[:20]!r})")

    async def finish(self, job: ImageJob, produced: Any, call_helper: Any) -> Any:
        """The avatar's background (``remove_background`` / ``bg_color``) through the background-removal family."""
        from deployments.families.backgrounds import finish_avatar

        return await finish_avatar(job, produced, call_helper)
