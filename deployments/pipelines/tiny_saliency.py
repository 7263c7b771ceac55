"""A tiny salient-object model with DESIGNED weights, and pictures it segments.

:func:`write_tiny_saliency` writes the same two files a real model uses
(``deployments.pipelines.saliency``)::

    <target>/model.onnx        input "input" 1x3x256x256 float -> output "output" 1x1x256x256
    <target>/preprocess.json   {"input_size": [256, 256], "mean": [0.5]*3, "std": [1.0]*3, "output": "minmax"}

The network is one 1x1 convolution and a sigmoid: "how red is this pixel".
With the input ``x = pixel / 255 - 0.5`` (RMBG-1.4's normalisation; the 0.5 cancels),
``logit = GAIN * (r - (g + b) / 2 - THRESHOLD)``, so a pixel whose red exceeds the mean
of its green and blue by more than ``THRESHOLD`` is subject. :func:`draw_subject`
paints a red ellipse (redness >= 0.7) on a blue-green textured background (redness
<= -0.2): the model's mask matches the ellipse up to resampling at the edge. The
weights are fixed numbers, not trained or random: deterministic, and the tests can
check the mask's alignment pixel by pixel.

Real weights drop in as the same two files (e.g. BRIA RMBG-1.4's ``onnx/model.onnx``
renamed ``model.onnx``, no ``preprocess.json`` needed). Never present this model's masks
as anything but "the red parts of the picture".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

INPUT_SIZE = 256
GAIN = 20.0
THRESHOLD = 0.3
SUBJECT_RED = (220, 255)  # the subject's red channel alternates between these (texture)
SUBJECT_GREEN_BLUE = 30


def write_tiny_saliency(target: str | Path) -> Path:
    """Write ``model.onnx`` and ``preprocess.json`` into ``target``; return ``target``."""
    import onnx
    from onnx import TensorProto, helper

    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    weight = helper.make_tensor("redness_weight", TensorProto.FLOAT, [1, 3, 1, 1], [GAIN, -GAIN / 2, -GAIN / 2])
    bias = helper.make_tensor("redness_bias", TensorProto.FLOAT, [1], [-GAIN * THRESHOLD])
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "redness_weight", "redness_bias"], ["logits"], kernel_shape=[1, 1]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "tiny_saliency",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, INPUT_SIZE, INPUT_SIZE])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="studio-tiny-saliency")
    model.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    preprocess = {"input_size": [INPUT_SIZE, INPUT_SIZE], "mean": [0.5, 0.5, 0.5], "std": [1.0, 1.0, 1.0],
                  "output": "minmax"}
    (out / "preprocess.json").write_text(json.dumps(preprocess, indent=2) + "\n")
    return out


def draw_subject(size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple[Image.Image, Image.Image]:
    """A synthetic picture and its true mask: a red ellipse filling ``box`` (left, top,
    right, bottom; PIL's ``ellipse`` rules) on a textured blue-green background, at
    ``size`` (width, height). Returns ``(RGB image, "L" mask: 255 = subject)``."""
    width, height = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    ys, xs = np.mgrid[0:height, 0:width]
    checker = ((xs // 8 + ys // 8) % 2).astype(np.float32)
    background = np.stack([
        40 + 40 * checker,  # red 40..80
        100 + 100 * xs / max(1, width - 1),  # green 100..200 across
        160 + 80 * ys / max(1, height - 1),  # blue 160..240 down
    ], axis=-1)
    stripes = (xs // 4) % 2
    subject = np.stack([
        np.where(stripes == 0, SUBJECT_RED[0], SUBJECT_RED[1]),
        np.full(xs.shape, SUBJECT_GREEN_BLUE),
        np.full(xs.shape, SUBJECT_GREEN_BLUE),
    ], axis=-1)
    inside = (np.asarray(mask) == 255)[..., None]
    pixels = np.where(inside, subject, np.rint(background)).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), mask
