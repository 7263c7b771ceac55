"""Background Removal: a salient-object segmentation model (ONNX Runtime) as a family deployment.

``model_source`` is a directory with ``model.onnx`` and an optional ``preprocess.json``
(``deployments.pipelines.saliency``: BRIA RMBG-1.4's ``onnx/model.onnx``, ISNet's
``isnet-general-use.onnx`` or U²-Net, renamed ``model.onnx``). It runs on the replica's GPU
through ONNX Runtime's CUDA provider when there is one, else on the CPU — the runtime the
face models use too; no ``trust_remote_code``, no other framework.

A job (``MattingJob``) gets one of four results, all PNG:

* ``transparent`` (default): RGBA, alpha = the subject mask;
* ``image`` (``bg_image``): the picture behind the subject, scaled to cover and centre-cropped;
* ``color`` (``bg_color`` = ``[r, g, b]``, 0..255): the subject on that colour (RGB);
* ``blur``: the image's own background Gaussian-blurred (standard deviation 2% of the longer
  side, ``deployments.pipelines.compositing.blur_radius``) behind the sharp subject (RGB).

Other family deployments (Replace Background, Face Avatar) call :meth:`MattingFamily.mask`
by Serve handle for a subject mask; it stores nothing.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

from deployments.errors import InvalidJobError, ModelError, new_incident
from deployments.families.base import STALL_SECONDS, FamilyBase, OnStep, Packaged, short_error
from deployments.types import MattingJob

if TYPE_CHECKING:
    from storage.base import ObjectStore
    from storage.settings import StorageSettings

logger = logging.getLogger("deployments.families.matting")

MattingMode = Literal["transparent", "color", "image", "blur"]
TASK = "remove_background"
MAX_SIDE = 1536
MODE_FIELDS = ("bg_image", "bg_color", "blur")  # at most one per job


@dataclass
class Matted:
    """What one job produced: the composite and how it was made."""

    image: Image.Image
    mode: MattingMode


def job_mode(job: MattingJob) -> MattingMode:
    """Which result the job asks for; an InvalidJobError naming the fields when it asks for several."""
    asked = [name for name, on in (("bg_image", job.bg_image is not None), ("bg_color", job.bg_color is not None),
                                   ("blur", bool(job.blur))) if on]
    if len(asked) > 1:
        raise InvalidJobError(", ".join(asked), f"send at most one of {', '.join(MODE_FIELDS)} "
                                                f"(got {' and '.join(asked)})")
    if not asked:
        return "transparent"
    return {"bg_image": "image", "bg_color": "color", "blur": "blur"}[asked[0]]  # type: ignore[return-value]


def check_bg_color(value: Any) -> tuple[int, int, int]:
    """``bg_color`` as ``(r, g, b)``: exactly three integers in 0..255."""
    if (not isinstance(value, list | tuple) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise InvalidJobError("bg_color", "allowed: [r, g, b], three integers in 0..255")
    return int(value[0]), int(value[1]), int(value[2])


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class MattingFamily(FamilyBase[MattingJob]):
    """Serve deployment of one salient-object model: background removal jobs, and subject
    masks for other families (:meth:`mask`).

    ``revision`` and ``dtype`` are accepted because the builder passes them to every kind,
    and ignored: an ONNX file has no revision and its own dtype. ``device`` is ``auto``
    (CUDA when the replica has a GPU), ``cuda`` or ``cpu``.
    """

    kind = "matting"

    def __init__(
        self,
        model_source: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        storage: StorageSettings | None = None,
        family: str = "",
        gpu: str = "",
        store: ObjectStore | None = None,
        max_side: int = MAX_SIDE,
        stall_seconds: float = STALL_SECONDS,
        device: str = "auto",
    ):
        from deployments.pipelines.saliency import SaliencyModel

        super().__init__(family=family, gpu=gpu, storage=storage, store=store, stall_seconds=stall_seconds)
        self.model_source = model_source
        self.max_side = max_side
        start = time.perf_counter()
        self.model = SaliencyModel.load(model_source, device=device)
        load_seconds = time.perf_counter() - start
        logger.info(
            "model loaded family=%s gpu=%s source=%s kind=matting providers=%s input_size=%s load_seconds=%.2f",
            family, gpu, model_source, ",".join(self.model.providers), self.model.preprocess.input_size, load_seconds,
            extra={"family": family, "gpu": gpu, "model_source": model_source, "kind": self.kind,
                   "providers": self.model.providers, "load_seconds": round(load_seconds, 3)},
        )

    # -- checks -----------------------------------------------------------
    def _check_size(self, field: str, image: Image.Image) -> None:
        width, height = image.size
        if width < 1 or height < 1 or max(width, height) > self.max_side:
            raise InvalidJobError(field, f"{field} is {width}x{height}; allowed: at most {self.max_side} pixels "
                                         "per side")

    def check(self, job: MattingJob) -> MattingMode:
        """Refuse a job this replica cannot do; return the result it asks for."""
        if job.task != TASK:
            raise InvalidJobError("task", f"this replica runs {TASK}, not {job.task!r}")
        if job.image is None:
            raise InvalidJobError("image", f"{TASK} needs an input image")
        self._check_size("image", job.image)
        mode = job_mode(job)
        if mode == "image":
            assert job.bg_image is not None
            self._check_size("bg_image", job.bg_image)
        elif mode == "color":
            check_bg_color(job.bg_color)
        return mode

    # -- hooks ------------------------------------------------------------
    def produce(self, job: MattingJob, on_step: OnStep | None, prepared: Any = None) -> Matted:
        from deployments.pipelines import compositing

        mode = self.check(job)
        assert job.image is not None  # checked
        image = job.image.convert("RGB")
        mask = self.model(image)
        if mode == "transparent":
            out = compositing.cutout(image, mask)
        elif mode == "color":
            out = compositing.on_color(image, mask, check_bg_color(job.bg_color))
        elif mode == "image":
            assert job.bg_image is not None
            out = compositing.on_image(image, mask, job.bg_image)
        else:
            out = compositing.blurred(image, mask)
        if on_step is not None:
            on_step(1, 1)
        return Matted(out, mode)

    def package(self, job: MattingJob, produced: Matted) -> tuple[list[Packaged], dict[str, Any]]:
        image = produced.image
        meta = {"width": image.width, "height": image.height, "mode": produced.mode}
        return [Packaged(encode_png(image), "image/png", "png", dict(meta))], meta

    def loaded(self) -> bool:
        return getattr(self, "model", None) is not None

    def facts(self) -> dict[str, Any]:
        return {
            "tasks": [TASK],
            "model_source": self.model_source,
            "input_size": list(self.model.preprocess.input_size),
            "providers": self.model.providers,
            "max_side": self.max_side,
        }

    # -- for other families -------------------------------------------------
    async def mask(self, image: Image.Image) -> Image.Image:
        """The subject mask of ``image`` (mode "L", the image's size, 255 = subject), for
        family deployments that call this one by handle. Runs in a worker thread (the ONNX
        session is thread-safe, so it does not wait for a job under way); stores nothing."""
        if not isinstance(image, Image.Image):
            raise InvalidJobError("image", "the mask needs an image")
        self._check_size("image", image)
        try:
            return await asyncio.to_thread(self.model, image)
        except Exception as exc:
            incident = new_incident()
            logger.error("mask failed (incident %s)", incident, exc_info=exc, extra={"incident": incident})
            raise ModelError(short_error(exc), incident) from exc
