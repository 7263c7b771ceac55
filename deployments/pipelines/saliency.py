"""Salient-object segmentation with ONNX Runtime: an image in, its subject mask out.

One directory holds the model::

    <dir>/model.onnx          the network: input 1x3xHxW float (N may be symbolic),
                              output 0 squeezable to HxW (e.g. 1x1xHxW)
    <dir>/preprocess.json     optional: {"input_size": [H, W], "mean": [r, g, b],
                              "std": [r, g, b], "output": "minmax" | "sigmoid" | "identity"}

The defaults are BRIA RMBG-1.4's (``onnx/model.onnx`` of ``briaai/RMBG-1.4``): 1024x1024,
pixels scaled to 0..1 then ``(x - 0.5) / 1.0``, and the first output (already a sigmoid in
the graph) min-max normalised, as BRIA's ``postprocess_image`` and rembg do. When the model's
input has a fixed H and W and ``preprocess.json`` names no ``input_size``, the model's own
size is used (e.g. 320x320 for U²-Net). Known layouts:

* RMBG-1.4: the defaults (no ``preprocess.json`` needed);
* ISNet (``isnet-general-use.onnx``): the defaults too;
* U²-Net (``u2net.onnx``): ``{"input_size": [320, 320], "mean": [0.485, 0.456, 0.406],
  "std": [0.229, 0.224, 0.225]}``.

``output``: ``minmax`` scales the map to 0..1 by its own min and max (a constant map is
only clipped to 0..1); ``sigmoid`` applies a sigmoid to logits; ``identity`` clips to 0..1.
Pixels are divided by 255 (BRIA's ``preprocess_image``; rembg divides by the image's max).

Sessions use :func:`deployments.pipelines.onnx_runtime.providers` (CUDA on a GPU replica,
else CPU). Thread safety: the model keeps no per-call state and ONNX Runtime's
``InferenceSession.run`` may be called from several threads at once, so one
:class:`SaliencyModel` serves concurrent callers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from PIL import Image

OutputNorm = Literal["minmax", "sigmoid", "identity"]
OUTPUT_NORMS: tuple[str, ...] = get_args(OutputNorm)
MODEL_FILE = "model.onnx"
PREPROCESS_FILE = "preprocess.json"
DEFAULT_INPUT_SIZE = (1024, 1024)  # (H, W), RMBG-1.4 / ISNet
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (1.0, 1.0, 1.0)
MAX_INPUT_SIDE = 4096  # a preprocess.json asking for more is refused
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input and its output becomes a mask."""

    input_size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    output: OutputNorm = "minmax"


def read_preprocess(directory: Path, model_hw: tuple[int | None, int | None]) -> Preprocess:
    """``<dir>/preprocess.json`` checked, with the defaults for what it leaves out."""
    path = directory / PREPROCESS_FILE
    raw: dict[str, Any] = {}
    if path.is_file():
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{PREPROCESS_FILE} must be a JSON object")
        unknown = set(raw) - {"input_size", "mean", "std", "output"}
        if unknown:
            raise ValueError(f"{PREPROCESS_FILE}: unknown keys {sorted(unknown)}")
    static = model_hw if None not in model_hw else None
    size = raw.get("input_size", static or DEFAULT_INPUT_SIZE)
    if (not isinstance(size, list | tuple) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_INPUT_SIDE for v in size)):
        raise ValueError(f"{PREPROCESS_FILE}: input_size must be [H, W], integers in 1..{MAX_INPUT_SIDE}")
    input_size = (int(size[0]), int(size[1]))
    for dim, (want, have) in enumerate(zip(input_size, model_hw)):
        if have is not None and have != want:
            raise ValueError(f"input_size {list(input_size)} does not match the model's fixed input "
                             f"{['H', 'W'][dim]} = {have}")
    mean = _triple(raw.get("mean", DEFAULT_MEAN), "mean")
    std = _triple(raw.get("std", DEFAULT_STD), "std")
    if min(std) <= 0:
        raise ValueError(f"{PREPROCESS_FILE}: std values must be > 0")
    output = raw.get("output", "minmax")
    if output not in OUTPUT_NORMS:
        raise ValueError(f"{PREPROCESS_FILE}: output must be one of {', '.join(OUTPUT_NORMS)}")
    return Preprocess(input_size, mean, std, output)


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    if (not isinstance(value, list | tuple) or len(value) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ValueError(f"{PREPROCESS_FILE}: {name} must be three numbers (r, g, b)")
    return float(value[0]), float(value[1]), float(value[2])


def _dim(value: Any) -> int | None:
    """A fixed dimension, or None for a symbolic one."""
    return value if isinstance(value, int) and value > 0 else None


class SaliencyModel:
    """A loaded salient-object model: ``model(image)`` is the subject mask ("L", image size)."""

    def __init__(self, session: Any, preprocess: Preprocess):
        self.session = session
        self.preprocess = preprocess
        model_input = session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.input_dtype = _FLOAT_TYPES[model_input.type]
        self.output_name: str = session.get_outputs()[0].name
        h, w = preprocess.input_size
        self._mean = np.asarray(preprocess.mean, np.float32).reshape(3, 1, 1)
        self._std = np.asarray(preprocess.std, np.float32).reshape(3, 1, 1)
        self._size = (w, h)  # PIL's order

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "auto") -> SaliencyModel:
        """Load ``<directory>/model.onnx`` (and ``preprocess.json``); refuse a model whose input
        is not 1x3xHxW float or whose first output does not squeeze to HxW (checked on its
        declared shapes, then by one run on a blank input)."""
        import onnxruntime

        from deployments.pipelines.onnx_runtime import providers

        root = Path(directory)
        path = root / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {MODEL_FILE} in the saliency model directory {root}")
        session = onnxruntime.InferenceSession(str(path), providers=providers(device))
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ValueError(f"a saliency model takes one input (1x3xHxW), this one takes {len(inputs)}")
        shape = list(inputs[0].shape)
        if len(shape) != 4 or _dim(shape[0]) not in (1, None) or _dim(shape[1]) != 3:
            raise ValueError(f"a saliency model's input must be 1x3xHxW, not {shape}")
        if inputs[0].type not in _FLOAT_TYPES:
            raise ValueError(f"a saliency model's input must be float or float16, not {inputs[0].type}")
        _check_output_shape(list(outputs[0].shape))
        model = cls(session, read_preprocess(root, (_dim(shape[2]), _dim(shape[3]))))
        h, w = model.preprocess.input_size
        probe = model._run(np.zeros((1, 3, h, w), np.float32))  # shapes the declaration left symbolic
        _check_output_shape(list(probe.shape))
        _squeeze(probe)
        return model

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def __call__(self, image: Image.Image) -> Image.Image:
        """The subject mask of ``image``: mode "L", ``image.size``, 255 = subject."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        resized = rgb.resize(self._size, Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, np.float32).transpose(2, 0, 1) / 255.0  # HWC -> CHW
        tensor = ((pixels - self._mean) / self._std)[None]
        saliency = self._normalise(_squeeze(self._run(tensor)))
        mask = Image.fromarray(saliency, mode="F").resize(rgb.size, Image.Resampling.BILINEAR)
        return Image.fromarray(np.rint(np.clip(np.asarray(mask), 0.0, 1.0) * 255).astype(np.uint8), mode="L")

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(tensor, dtype=self.input_dtype)}
        return np.asarray(self.session.run([self.output_name], feed)[0], dtype=np.float32)

    def _normalise(self, saliency: np.ndarray) -> np.ndarray:
        kind = self.preprocess.output
        if kind == "sigmoid":
            saliency = 1.0 / (1.0 + np.exp(-np.clip(saliency, -60.0, 60.0)))
        elif kind == "minmax":
            low, high = float(saliency.min()), float(saliency.max())
            if high - low > 1e-6:
                saliency = (saliency - low) / (high - low)
        return np.clip(saliency, 0.0, 1.0).astype(np.float32)


def _check_output_shape(shape: list[Any]) -> None:
    """Output 0 must squeeze to HxW: at most two fixed dimensions other than 1 (symbolic ones,
    e.g. a batch axis, are left to the probe run, which sees the real shape)."""
    if len(shape) < 2 or sum(1 for d in shape if isinstance(d, int) and d != 1) > 2:
        raise ValueError(f"a saliency model's first output must squeeze to HxW (e.g. 1x1xHxW), not {shape}")


def _squeeze(output: np.ndarray) -> np.ndarray:
    """``1x1xHxW`` (or ``HxW``, ``1xHxWx1``, …) → ``HxW``."""
    squeezed = output.squeeze()
    if squeezed.ndim == 2:
        return squeezed
    if squeezed.ndim < 2 and output.ndim >= 2:  # H or W is 1 itself
        return output.reshape(output.shape[-2:])
    raise ValueError(f"the saliency model's output {list(output.shape)} does not squeeze to HxW")
