"""Face detection and identity embeddings with insightface (2.1), for the FaceID tasks.

:meth:`FaceAnalyzer.load` opens a local insightface model pack — a directory such as
``buffalo_l`` (``det_10g.onnx`` SCRFD detector + ``w600k_r50.onnx`` ArcFace recognizer,
plus landmark/attribute models that are skipped) — with
``insightface.app.FaceAnalysis(name=<directory>)``, which loads a directory that exists
as it is. What insightface 2.1 does with it (read in its source):

* a directory without a ``manifest.json`` of ``manifest_version: 2`` is the legacy pack:
  each ``*.onnx`` is routed by its graph (≥ 5 outputs → SCRFD detector; a square ≥ 112
  input → ArcFace recognizer; …). Nothing is downloaded or verified: the model-license
  signature check (``model_zoo/model_license.py``, ``trusted_keys/``) is only used by the
  GUI, and a manifest's optional per-file SHA-256 applies only to V2 packages. Only a
  *name* that is not a directory makes insightface download (to ``~/.insightface``), so a
  missing directory is refused here before insightface sees it.
* ONNX Runtime sessions get ``deployments.pipelines.onnx_runtime.providers(device)``
  (CUDA on a replica with a GPU, else the CPU).
* Images go in as BGR ``uint8`` arrays (cv2's order); ours are PIL RGB, so they are flipped.
  The detector letterboxes the image into ``det_size`` (set explicitly, multiples of 32)
  and keeps faces scoring ≥ ``det_thresh``; boxes come back in the input's pixels.
  The recognizer embeds the face aligned on its 5 keypoints (112×112); the embedding is
  L2-normalised here, as IP-Adapter FaceID expects (``Face.normed_embedding``).

Several faces: the largest box is used and the count is reported (``faces_detected``).
No face: :class:`~deployments.errors.NoFaceDetected` (a 422 of its own type).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deployments.errors import InvalidJobError, NoFaceDetected

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger("deployments.pipelines.faces")

DEFAULT_DET_SIZE = (640, 640)  # what IP-Adapter FaceID's authors use with buffalo_l
DEFAULT_DET_THRESH = 0.5
MODULES = ("detection", "recognition")  # the pack's other models (landmarks, gender/age) are not loaded
MAX_INPUT_PIXELS = 40_000_000  # a decoded image larger than this is refused, not analysed


@dataclass
class DetectedFace:
    """The face a job uses: its identity embedding and where it was found."""

    embedding: np.ndarray  # float32 [D], L2-normalised
    bbox: list[int]  # [x1, y1, x2, y2] in the input image's pixels
    score: float  # the detector's confidence
    faces: int  # how many faces the image holds

    def meta(self) -> dict[str, Any]:
        """What the result's meta says about the face (plain JSON)."""
        return {"bbox": list(self.bbox), "score": round(self.score, 4), "faces_detected": self.faces}

    public = meta


class FaceAnalyzer:
    """An insightface ``FaceAnalysis`` (detector + recognizer) prepared for one det size."""

    def __init__(self, app: Any, providers: list[str]):
        self.app = app
        self.providers = providers

    @classmethod
    def load(
        cls,
        directory: str,
        *,
        device: str = "auto",
        det_size: tuple[int, int] = DEFAULT_DET_SIZE,
        det_thresh: float = DEFAULT_DET_THRESH,
    ) -> FaceAnalyzer:
        """Load the model pack in local ``directory`` (never a download; see the module docstring)."""
        from insightface.app import FaceAnalysis

        from deployments.pipelines.onnx_runtime import providers as ort_providers

        path = Path(directory)
        if not path.is_dir():
            raise FileNotFoundError(f"face analysis model directory {directory} does not exist")
        width, height = (int(v) for v in det_size)
        if width < 32 or height < 32 or width % 32 or height % 32:
            raise ValueError(f"det_size must be two positive multiples of 32, got {det_size}")
        if not 0.0 < det_thresh < 1.0:
            raise ValueError(f"det_thresh must be in (0, 1), got {det_thresh}")
        providers = ort_providers(device)
        try:
            app = FaceAnalysis(name=str(path.resolve()), allowed_modules=list(MODULES), providers=providers)
        except AssertionError as exc:  # insightface asserts there is a detector
            raise RuntimeError(f"no face detector (SCRFD/RetinaFace *.onnx) in {directory}") from exc
        if "recognition" not in app.models:
            raise RuntimeError(f"no face recognition model (ArcFace *.onnx) in {directory}")
        # ctx_id < 0 pins sessions to the CPU; ≥ 0 keeps the providers given above.
        ctx_id = 0 if providers[0] == "CUDAExecutionProvider" else -1
        app.prepare(ctx_id=ctx_id, det_thresh=float(det_thresh), det_size=(width, height))
        logger.info("face analysis loaded from %s (providers %s, det_size %sx%s)", directory, providers, width, height)
        return cls(app, providers)

    @property
    def embedding_dim(self) -> int | None:
        """The recognizer's embedding size, when its graph states it."""
        shape = self.app.models["recognition"].output_shape
        return int(shape[-1]) if shape and isinstance(shape[-1], int) else None

    def detect(self, image: Image.Image) -> list[Any]:
        """Every face insightface finds in ``image`` (its ``Face`` objects, with embeddings)."""
        width, height = image.size
        if width < 1 or height < 1 or width * height > MAX_INPUT_PIXELS:
            raise InvalidJobError("image", f"the image is {width}x{height}; allowed: 1 to {MAX_INPUT_PIXELS} pixels")
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)[:, :, ::-1])
        return list(self.app.get(bgr))

    def largest(self, image: Image.Image) -> DetectedFace:
        """The largest face in ``image`` (by box area); ``NoFaceDetected`` when there is none."""
        faces = self.detect(image)
        if not faces:
            raise NoFaceDetected()
        face = max(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
        embedding = np.asarray(face.embedding, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(embedding))
        if not np.isfinite(norm) or norm == 0.0:
            raise RuntimeError("the face recognizer returned an empty or non-finite embedding")
        width, height = image.size
        x1, y1, x2, y2 = (float(v) for v in face.bbox[:4])
        bbox = [int(round(min(max(x1, 0.0), width))), int(round(min(max(y1, 0.0), height))),
                int(round(min(max(x2, 0.0), width))), int(round(min(max(y2, 0.0), height)))]
        return DetectedFace(embedding=embedding / norm, bbox=bbox, score=float(face.det_score), faces=len(faces))
