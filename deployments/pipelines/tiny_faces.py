"""A tiny insightface model pack and a tiny IP-Adapter FaceID for ``tiny-sdxl``, built by code.

**Not a face model.** The pack's detector finds disks of one skin colour
(:data:`FACE_COLOUR`), which :func:`draw_faces` draws; it exists so tests travel the
real path — ``insightface.app.FaceAnalysis`` routing the ``*.onnx`` files by their
inputs/outputs, SCRFD's decoding and NMS, ArcFace's 5-point alignment, diffusers'
``load_ip_adapter`` — with no download. The FaceID adapter has seeded random
weights: it produces noise, like every tiny diffusion model.

On-disk layouts (the same as the real weights, so the same loader calls work):

* face pack (as ``buffalo_l``: a legacy directory of ``*.onnx``, no ``manifest.json``)::

      <out>/det_tiny.onnx   SCRFD layout: input [1, 3, H, W] (H, W multiples of 32),
                            9 outputs: scores [N, 1] for strides 8/16/32, then boxes [N, 4],
                            then 5 keypoints [N, 10]; N = (H/s)·(W/s)·2 anchors
      <out>/w_tiny.onnx     ArcFace layout: input [n, 3, 112, 112], output [n, 512]

* FaceID adapter (as ``h94/IP-Adapter-FaceID``, files at the repository root)::

      <out>/ip-adapter-faceid_sdxl.bin   torch.save({"image_proj": {...}, "ip_adapter": {...}})

  ``image_proj``: ``proj.0`` (512 → 512), ``proj.2`` (512 → 4 tokens × 64) and ``norm``
  (``IPAdapterFaceIDImageProjection``); ``ip_adapter``: ``<n>.to_{k,v}_ip.weight`` for the
  cross-attention processors (n = 1, 3, 5, … in ``unet.attn_processors`` order) and the
  FaceID LoRA ``<n>.to_{q,k,v,out}_lora.{down,up}.weight`` for every processor (n = 0, 1, 2, …).

The detector's design (weights set by hand, not trained; preprocessing is SCRFD's,
``(BGR→RGB − 127.5) / 128``):

1. *Skin map* (1×1 convolutions): ``m = clip(2 − 2·L1(pixel − FACE_COLOUR) / tolerance, 0, 1)``:
   1 near the face colour, 0 for other colours (and for the black letterbox insightface pads with).
2. *Cells*: ``m`` average-pooled over 4×4-pixel cells.
3. Per stride s and anchor a there is a square *window* of side K (16/32 px at stride 8,
   64/128 at 16, 256/512 at 32) centred on the anchor, inside a *surround* that adds a
   band of K/8 (at least one cell) on every side. Separable convolutions sum, over the
   surround, the skin mass and its first and second moments about the anchor, and the
   mass inside the window.
4. *Score* = sigmoid(10 · (fill − 4·band − 2·(0.75 − compactness)⁺ − 0.15)): ``fill`` is
   the share of the window that is skin, ``band`` the share of the band around it,
   ``compactness`` the mass's spread against a disk's (mass/2π over its variance: ~1 for
   a disk, low for two blobs apart). A disk that sits in the window, leaves the band
   (nearly) empty and fills ≥ ~15 % of the window scores above 0.5 (det_thresh); a piece
   of a larger disk (the band is skin too), two faces in one window, a skin-coloured
   wall, or scattered skin-coloured pixels do not.
5. *Box*: from the surround's moments: centre = the mass's centroid, side = 2·√(mass/π)
   (the disk of that area); so every anchor that sees a disk whole gives the same box, and
   SCRFD's NMS keeps one. Keypoints: a fixed 5-point layout (:data:`KEYPOINTS`: eyes, nose,
   mouth corners in the ArcFace template's proportions) scaled by that radius.

Measured on :func:`draw_faces` pictures at det_size 640: every disk of radius 8 to 250
detector pixels is found once, its box within IoU 0.8 of the disk's; several disks are
found one each when the gap between two is at least the larger radius (with half that
gap some are missed; nearly touching disks may also come back as one merged box); plain,
noise, gradient and skin-toned-wall images give none. The recognizer is seeded random (inner 64×64 of the aligned crop → pool →
per-channel centring → conv → ReLU → linear): deterministic and input-dependent, so faces
drawn with different ``identity`` features get different embeddings (cosine ~0.92-0.94;
the same identity moved and resized: > 0.99).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

DETECTOR_FILE = "det_tiny.onnx"
RECOGNIZER_FILE = "w_tiny.onnx"
FACEID_SDXL_WEIGHTS = "ip-adapter-faceid_sdxl.bin"

FACE_COLOUR = (224, 172, 140)  # RGB the tiny detector takes for skin
BACKGROUND = (46, 64, 94)
COLOUR_TOLERANCE = 60.0  # L1 distance (0..255 per channel) where the skin score reaches 0
WINDOWS: dict[int, tuple[int, int]] = {8: (16, 32), 16: (64, 128), 32: (256, 512)}  # window side per anchor
CELL = 4  # pixels per side of the cells the windows sum
BAND_PENALTY = 4.0
COMPACTNESS_PENALTY = 2.0
COMPACTNESS_FLOOR = 0.75  # below this (mass spread wider than a disk's) the score drops
MIN_FILL = 0.15
SHARPNESS = 10.0
#: Keypoints (left eye, right eye, nose, mouth left, mouth right) as offsets from the
#: centre in radii: the ArcFace template's proportions.
KEYPOINTS = ((-0.37, -0.17), (0.37, -0.17), (0.0, 0.24), (-0.30, 0.67), (0.30, 0.67))
EMBEDDING_DIM = 512
_OPSET = 17
_IR_VERSION = 8
_SEED = 0
_FACEID_TOKENS = 4
_FACEID_LORA_RANK = 4


# ---- the detector ----------------------------------------------------------------------

class _Graph:
    """A small helper around ``onnx.helper``: named nodes and initializers."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value, hint: str = "c") -> str:
        import numpy as np
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def ints(self, value, hint: str = "shape") -> str:
        import numpy as np
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, output: str | None = None, **attrs) -> str:
        from onnx import helper

        out = output or self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(f"n_{op_type.lower()}"), **attrs))
        return out


def _skin_map(g: _Graph, image: str) -> str:
    """1×1 convolutions: per-pixel closeness to ``FACE_COLOUR`` in [0, 1]."""
    import numpy as np

    target = [(c - 127.5) / 128.0 for c in FACE_COLOUR]  # SCRFD's normalisation, RGB order after swapRB
    diff = g.op("Conv", [image, g.const(np.eye(3).reshape(3, 3, 1, 1), "eye"), g.const([-t for t in target], "target")])
    distance = g.op("Abs", [diff])
    tolerance = COLOUR_TOLERANCE / 128.0
    weights = np.full((1, 3, 1, 1), -2.0 / tolerance)
    closeness = g.op("Conv", [distance, g.const(weights, "skin_w"), g.const([2.0], "skin_b")])
    return g.op("Clip", [closeness, g.const(0.0, "zero"), g.const(1.0, "one")], "skin")


def _margin(k: int) -> int:
    """Cells of surround on each side of a k-cell window (an eighth of the window, at least one)."""
    return max(1, k // 8)


def _window_kernels(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable kernels over the surround (k + 2·margin cells): vertical [4, 1, n, 1] (sum, Σdy,
    Σdy², window sum) and horizontal [5, 4, 1, n] (mass, Σdx, Σdy, Σ(dx²+dy²), window mass);
    d = a cell centre's offset from the anchor in pixels."""
    import numpy as np

    margin = _margin(k)
    size = k + 2 * margin
    offsets = CELL * np.arange(size, dtype=np.float64) + (CELL - 1) / 2 - CELL * (k // 2 + margin)
    ones = np.ones(size)
    inner = np.zeros(size)
    inner[margin: margin + k] = 1.0
    vertical = np.stack([ones, offsets, offsets**2, inner]).reshape(4, 1, size, 1)
    horizontal = np.zeros((5, 4, 1, size))
    horizontal[0, 0, 0] = ones  # mass
    horizontal[1, 0, 0] = offsets  # Σ dx
    horizontal[2, 1, 0] = ones  # Σ dy
    horizontal[3, 0, 0] = offsets**2  # Σ dx² …
    horizontal[3, 2, 0] = ones  # … + Σ dy²
    horizontal[4, 3, 0] = inner  # mass inside the window
    return vertical, horizontal


def _anchor_head(g: _Graph, cells: str, stride: int, window: int) -> tuple[str, str, str]:
    """Score [1, 1, h, w], box distances [1, 4, h, w] and keypoints [1, 10, h, w] (in strides)."""
    k, step = window // CELL, stride // CELL
    before = k // 2 + _margin(k)  # surround cells before the anchor; after it: before − step (h = H / stride)
    vertical, horizontal = _window_kernels(k)
    columns = g.op("Conv", [cells, g.const(vertical, "vk")], strides=[step, 1], pads=[before, 0, before - step, 0])
    sums = g.op("Conv", [columns, g.const(horizontal, "hk")], strides=[1, step], pads=[0, before, 0, before - step])

    def channel(index: int) -> str:
        return g.op("Slice", [sums, g.ints([index]), g.ints([index + 1]), g.ints([1])], f"ch{index}")

    mass, sum_x, sum_y, sum_sq, inner = (channel(i) for i in range(5))
    safe = g.op("Max", [mass, g.const(1e-3, "eps")])
    mean_x = g.op("Div", [sum_x, safe])
    mean_y = g.op("Div", [sum_y, safe])
    spread = g.op("Sub", [g.op("Div", [sum_sq, safe]),
                          g.op("Add", [g.op("Mul", [mean_x, mean_x]), g.op("Mul", [mean_y, mean_y])])])
    cell_spread = 2 * (CELL**2 - 1) / 12  # each cell's own spread (uniform over CELL px, two axes)
    variance = g.op("Max", [g.op("Add", [spread, g.const(cell_spread)]), g.const(1e-3)])
    area_px = g.op("Mul", [mass, g.const(float(CELL**2))])
    radius = g.op("Sqrt", [g.op("Div", [area_px, g.const(math.pi)])], "radius")
    compactness = g.op("Div", [g.op("Div", [area_px, g.const(2 * math.pi)]), variance])
    loose = g.op("Relu", [g.op("Sub", [g.const(COMPACTNESS_FLOOR), compactness])])
    band_cells = (k + 2 * _margin(k)) ** 2 - k * k
    occupancy = g.op("Div", [g.op("Sub", [mass, inner]), g.const(float(band_cells))])  # of the band around the window
    fill = g.op("Div", [inner, g.const(float(k * k))])
    penalties = g.op("Add", [g.op("Mul", [occupancy, g.const(BAND_PENALTY)]), g.op("Mul", [loose, g.const(COMPACTNESS_PENALTY)])])
    logit = g.op("Sub", [g.op("Sub", [fill, penalties]), g.const(MIN_FILL)])
    score = g.op("Sigmoid", [g.op("Mul", [logit, g.const(SHARPNESS)])], "score")

    inv = g.const(1.0 / stride, "inv_stride")
    left = g.op("Mul", [g.op("Sub", [radius, mean_x]), inv])
    top = g.op("Mul", [g.op("Sub", [radius, mean_y]), inv])
    right = g.op("Mul", [g.op("Add", [radius, mean_x]), inv])
    bottom = g.op("Mul", [g.op("Add", [radius, mean_y]), inv])
    box = g.op("Concat", [left, top, right, bottom], "box", axis=1)
    points = []
    for px, py in KEYPOINTS:
        points.append(g.op("Mul", [g.op("Add", [mean_x, g.op("Mul", [radius, g.const(px)])]), inv]))
        points.append(g.op("Mul", [g.op("Add", [mean_y, g.op("Mul", [radius, g.const(py)])]), inv]))
    keypoints = g.op("Concat", points, "kps", axis=1)
    return score, box, keypoints


def _anchor_rows(g: _Graph, maps: Sequence[str], width: int, output: str) -> str:
    """[1, C, h, w] per anchor → SCRFD's rows [h·w·anchors, C] (location-major, anchors interleaved)."""
    per_anchor = [g.op("Unsqueeze", [g.op("Transpose", [m], perm=[0, 2, 3, 1]), g.ints([3])]) for m in maps]
    stacked = g.op("Concat", per_anchor, axis=3)  # [1, h, w, anchors, C]
    return g.op("Reshape", [stacked, g.ints([-1, width])], output=output)


def build_detector():
    """The tiny SCRFD-layout detector as an ``onnx.ModelProto`` (see the module docstring)."""
    from onnx import TensorProto, helper

    g = _Graph("det_")
    image = "input.1"
    skin = _skin_map(g, image)
    cells = g.op("AveragePool", [skin], "cells", kernel_shape=[CELL, CELL], strides=[CELL, CELL])
    scores, boxes, keypoints = [], [], []
    for stride, windows in WINDOWS.items():
        heads = [_anchor_head(g, cells, stride, window) for window in windows]
        scores.append(_anchor_rows(g, [h[0] for h in heads], 1, f"score_{stride}"))
        boxes.append(_anchor_rows(g, [h[1] for h in heads], 4, f"bbox_{stride}"))
        keypoints.append(_anchor_rows(g, [h[2] for h in heads], 10, f"kps_{stride}"))
    inputs = [helper.make_tensor_value_info(image, TensorProto.FLOAT, [1, 3, "height", "width"])]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{name.split('_')[1]}", width])
        for names, width in ((scores, 1), (boxes, 4), (keypoints, 10))
        for name in names
    ]
    graph = helper.make_graph(g.nodes, "tiny_scrfd", inputs, outputs, g.initializers)
    return _model(graph)


def build_recognizer():
    """The tiny ArcFace-layout recognizer (seeded random weights) as an ``onnx.ModelProto``."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(_SEED)
    g = _Graph("rec_")
    image = "input.1"
    # The inner face (eyes to mouth, 64×64 of the aligned 112×112), pooled to 16×16 and centred
    # per channel: what tells faces apart is their features, not the skin colour they share.
    inner = g.op("Slice", [image, g.ints([36, 24]), g.ints([100, 88]), g.ints([2, 3])])
    pooled = g.op("AveragePool", [inner], kernel_shape=[4, 4], strides=[4, 4])  # [n, 3, 16, 16]
    pooled = g.op("Sub", [pooled, g.op("ReduceMean", [pooled], axes=[2, 3], keepdims=1)])
    conv_w = rng.normal(0.0, (2.0 / 27) ** 0.5, (8, 3, 3, 3))
    features = g.op("Relu", [g.op("Conv", [pooled, g.const(conv_w, "conv_w"), g.const(rng.normal(0, 0.1, 8), "conv_b")],
                                  strides=[2, 2], pads=[1, 1, 1, 1])])  # [n, 8, 8, 8]
    flat = g.op("Flatten", [features], axis=1)  # [n, 512]
    fc_w = rng.normal(0.0, 512**-0.5, (512, EMBEDDING_DIM))
    g.op("Gemm", [flat, g.const(fc_w, "fc_w"), g.const(np.zeros(EMBEDDING_DIM), "fc_b")], output="embedding")
    inputs = [helper.make_tensor_value_info(image, TensorProto.FLOAT, ["n", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", EMBEDDING_DIM])]
    return _model(helper.make_graph(g.nodes, "tiny_arcface", inputs, outputs, g.initializers))


def _model(graph):
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="studio-tiny-faces")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_tiny_face_pack(target: Path) -> Path:
    """Write the tiny insightface pack (detector + recognizer ``*.onnx``) into ``target``; return it."""
    import onnx

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    onnx.save(build_detector(), str(target / DETECTOR_FILE))
    onnx.save(build_recognizer(), str(target / RECOGNIZER_FILE))
    return target


# ---- pictures the tiny detector sees faces in ------------------------------------------

Face = tuple[int, int, int] | tuple[int, int, int, int]


def draw_faces(size: tuple[int, int], faces: Sequence[Face], background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """An RGB image of ``size`` with a "face" per ``(cx, cy, radius[, identity])``: a disk of
    :data:`FACE_COLOUR` with eyes and a mouth at the keypoint layout, whose colours and sizes
    come from ``identity`` (default 0), so different identities get different embeddings.
    No face: a plain ``background``, in which the tiny detector finds nothing."""
    import numpy as np
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for face in faces:
        cx, cy, r = face[0], face[1], face[2]
        identity = face[3] if len(face) > 3 else 0
        rng = np.random.default_rng(1000 + int(identity))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=FACE_COLOUR)
        eye = (int(rng.integers(0, 90)), int(rng.integers(0, 90)), int(rng.integers(0, 90)))
        mouth = (int(rng.integers(90, 200)), 30, int(rng.integers(30, 140)))
        eye_r = r * float(rng.uniform(0.07, 0.13))
        for px, py in KEYPOINTS[:2]:
            ex, ey = cx + px * r, cy + py * r
            draw.ellipse((ex - eye_r, ey - eye_r, ex + eye_r, ey + eye_r), fill=eye)
        half = r * float(rng.uniform(0.2, 0.35))
        my = cy + KEYPOINTS[3][1] * r
        draw.ellipse((cx - half, my - r * 0.06, cx + half, my + r * 0.06), fill=mouth)
    return image


# ---- the FaceID adapter ----------------------------------------------------------------

def faceid_state_dict(unet, embed_dim: int = EMBEDDING_DIM) -> dict[str, dict]:
    """Seeded IP-Adapter FaceID tensors for ``unet`` in h94's nested ``.bin`` layout."""
    import torch

    generator = torch.Generator().manual_seed(_SEED)

    def rand(*shape, scale=0.1):
        return torch.randn(shape, generator=generator) * scale

    cross = int(unet.config.cross_attention_dim)
    image_proj = {
        "proj.0.weight": rand(embed_dim, embed_dim, scale=embed_dim**-0.5),  # mult 1 (real SDXL: 2)
        "proj.0.bias": rand(embed_dim),
        "proj.2.weight": rand(_FACEID_TOKENS * cross, embed_dim, scale=embed_dim**-0.5),
        "proj.2.bias": rand(_FACEID_TOKENS * cross),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    ip_adapter: dict[str, torch.Tensor] = {}
    for index, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name[: -len(".processor")])
        if name.endswith("attn2.processor"):
            hidden = attn.to_k.out_features
            ip_adapter[f"{index}.to_k_ip.weight"] = rand(hidden, cross)
            ip_adapter[f"{index}.to_v_ip.weight"] = rand(hidden, cross)
        for proj, linear in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v), ("out", attn.to_out[0])):
            ip_adapter[f"{index}.to_{proj}_lora.down.weight"] = rand(_FACEID_LORA_RANK, linear.in_features)
            ip_adapter[f"{index}.to_{proj}_lora.up.weight"] = rand(linear.out_features, _FACEID_LORA_RANK)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def write_tiny_faceid_adapter(target: Path) -> Path:
    """Write an h94/IP-Adapter-FaceID-style ``ip-adapter-faceid_sdxl.bin`` for ``tiny-sdxl``; return ``target``."""
    import torch

    from deployments.tiny import build_sdxl

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    state = faceid_state_dict(build_sdxl().unet)
    torch.save({part: {k: v.contiguous() for k, v in tensors.items()} for part, tensors in state.items()},
               str(target / FACEID_SDXL_WEIGHTS))
    return target
