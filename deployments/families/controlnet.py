"""ControlNet on a diffusion family: the control image is derived from ``image`` by the
app's preprocessor (Canny edges, a depth map, a pose skeleton) inside the replica, and
each ControlNet gets a pipeline over the base's own modules (``from_pipe``).

``strength`` is the ControlNet conditioning scale (0..1). ``return_control_image``
adds the control image to the outputs, after the generated images.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from deployments.errors import InvalidJobError
from deployments.types import ImageJob

if TYPE_CHECKING:
    from PIL import Image

    from deployments.loader import DiffusionPipelines
    from deployments.pipelines.preprocessors import DepthEstimator, PoseEstimator


class ControlNetTask:
    """The ControlNets an app set uses on one replica, their preprocessors, and their calls."""

    def __init__(self, pipelines: DiffusionPipelines, components: dict[str, Any], controls: list[str]):
        from deployments.loader import resolve_dtype
        from deployments.pipelines.controlnet import controlnet_pipeline, load_controlnet

        dtype = resolve_dtype(pipelines.dtype, pipelines.device)
        self.pipes: dict[str, Any] = {}
        self.preprocessors: dict[str, str] = {}
        self.depth: DepthEstimator | None = None
        self.pose: PoseEstimator | None = None
        for name in controls:
            config = components["controlnets"][name]
            net = load_controlnet(config["path"], dtype, pipelines.device)
            pipe = controlnet_pipeline(pipelines.text2img, net)
            pipe.set_progress_bar_config(disable=True)
            self.pipes[name] = pipe
            self.preprocessors[name] = config["preprocessor"]
        wanted = set(self.preprocessors.values())
        from deployments.pipelines.preprocessors import DepthEstimator, PoseEstimator

        if "depth" in wanted:
            self.depth = DepthEstimator.load(components["depth_estimator"], device=pipelines.device, dtype=dtype)
        if "openpose" in wanted:
            self.pose = PoseEstimator.load(components["pose_estimator"], device=pipelines.device, dtype=dtype)

    def all_pipelines(self) -> list[Any]:
        return list(self.pipes.values())

    def control_image(self, job: ImageJob) -> Image.Image:
        """The app's preprocessor applied to the job's image (same size)."""
        from deployments.pipelines.preprocessors import canny

        kind = self.preprocessors[job.control or ""]
        image = job.input_image().convert("RGB")
        if kind == "canny":
            return canny(image)
        if kind == "depth" and self.depth is not None:
            return self.depth(image)
        if kind == "openpose" and self.pose is not None:
            return self.pose(image)
        return image

    def kwargs(self, job: ImageJob, control: Image.Image) -> dict[str, Any]:
        from deployments.pipelines.controlnet import controlnet_call_kwargs

        return controlnet_call_kwargs(control, job.strength)

    def check(self, job: ImageJob) -> None:
        if job.control not in self.pipes:
            raise InvalidJobError("app_id", f"this replica has no ControlNet {job.control!r}")
        if job.image is None:
            raise InvalidJobError("image", f"{job.task} needs an input image")
        if not 0.0 <= job.strength <= 1.0:
            raise InvalidJobError("strength", "strength must be in 0..1")

    @contextmanager
    def call(self, job: ImageJob) -> Iterator[tuple[Any, dict[str, Any], list[Image.Image]]]:
        """The pipeline, its task kwargs, and the extra outputs (the control image if asked)."""
        control = self.control_image(job)
        yield self.pipes[job.control or ""], self.kwargs(job, control), [control] if job.return_control_image else []
