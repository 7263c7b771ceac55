"""ESRGAN-family upscalers (e.g. 4x-UltraSharp) loaded with spandrel, run tiled.

``load_upscaler`` reads one weights file (``.safetensors`` or ``.pth``; a directory must
hold exactly one) through ``spandrel.ModelLoader().load_from_file``, which detects the
architecture and its scale from the state dict. Any spandrel super-resolution image model
with 3 input and 3 output channels and a native scale of 2 or 4 is accepted; anything else
(inpainting, face restoration, 1x restoration, 3x/8x models, grayscale models) is refused
at load. ``.pth`` files are read with spandrel's restricted unpickler.

Scales from a native 2x or 4x model (every model pass is tiled)::

    native 4x: 2x = pass, Lanczos ÷2      native 2x: 2x = pass
               4x = pass                             4x = pass, pass
               8x = pass, Lanczos ÷2, pass           8x = pass, pass, pass

i.e. ``k`` passes with ``native**k >= scale``, and the excess factor ``native**k / scale``
removed by a Lanczos downscale right after the first pass (the model always sees the
original pixels first; for 8x from a 4x model the second pass sees 2x pixels, not 4x, so
the largest intermediate is the output itself).

Tiling: the input of a pass is cut into near-equal cores of at most ``tile`` pixels a
side; each core is run with ``overlap`` pixels of context on every side (clamped at the
image border) and only the core of the result is pasted. Zero-padding at a clamped border
is the model's own border, so the tiled result equals the untiled one up to float noise
whenever the model's receptive field fits in the overlap (real ESRGANs' fields are wider:
the overlap then hides seams rather than removing them exactly). Memory per model call is
bounded by ``(tile + 2 * overlap)²``; the output is assembled as 8-bit on the CPU.

Alpha: an input with transparency keeps it; the alpha channel is resized with Lanczos to
the output size (the model upscales the colour channels only).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from deployments.errors import InvalidJobError

logger = logging.getLogger("deployments.pipelines.esrgan")

SCALES = (2, 4, 8)
NATIVE_SCALES = (2, 4)
WEIGHT_SUFFIXES = (".safetensors", ".pth")

OnStep = Callable[[int, int], None]


@dataclass(frozen=True)
class Step:
    """One step of an upscale: a (tiled) model pass, or a Lanczos downscale by ``factor``."""

    kind: Literal["pass", "downscale"]
    factor: int

    def __str__(self) -> str:
        return f"model x{self.factor}" if self.kind == "pass" else f"lanczos /{self.factor}"


def plan_for(native_scale: int, scale: int) -> list[Step]:
    """The steps that make ``scale`` from a model of ``native_scale`` (see the module doc)."""
    if native_scale not in NATIVE_SCALES:
        raise ValueError(f"native scale must be one of {NATIVE_SCALES}, not {native_scale}")
    if scale not in SCALES:
        raise InvalidJobError("scale", f"allowed: one of {', '.join(map(str, SCALES))} (got {scale})")
    passes = 1
    while native_scale**passes < scale:
        passes += 1
    excess = native_scale**passes // scale
    steps = [Step("pass", native_scale)]
    if excess > 1:
        steps.append(Step("downscale", excess))
    steps += [Step("pass", native_scale)] * (passes - 1)
    return steps


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans covering ``0..length`` in near-equal pieces of at most ``tile``."""
    count = max(1, math.ceil(length / tile))
    bounds = [round(i * length / count) for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def weights_file(path: str | Path) -> Path:
    """The weights file at ``path``: the file itself, or the one weights file in a directory."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
        if len(found) != 1:
            raise ValueError(f"{path} must hold exactly one {' or '.join(WEIGHT_SUFFIXES)} file, found {len(found)}")
        return found[0]
    if not path.is_file():
        raise ValueError(f"upscaler weights not found: {path}")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"{path.name}: upscaler weights must be {' or '.join(WEIGHT_SUFFIXES)}")
    return path


class Upscaler:
    """A loaded super-resolution model and how to make 2x/4x/8x from it, tiled. No IO."""

    def __init__(self, descriptor: Any, *, device: str, dtype: Any, tile: int = 256, overlap: int = 16,
                 source: str = ""):
        if tile < 1 or overlap < 0:
            raise ValueError(f"tile must be >= 1 and overlap >= 0 (got {tile}, {overlap})")
        self.descriptor = descriptor
        self.device = device
        self.dtype = dtype
        self.tile = tile
        self.overlap = overlap
        self.source = source
        self._lock = threading.Lock()

    @property
    def native_scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.id)

    def plan(self, scale: int) -> list[Step]:
        """The steps for ``scale`` (``InvalidJobError`` naming ``scale`` for one not in 2, 4, 8)."""
        return plan_for(self.native_scale, scale)

    def count_tiles(self, width: int, height: int, scale: int) -> int:
        """Model calls an upscale of a ``width`` x ``height`` image by ``scale`` makes."""
        total = 0
        for step in self.plan(scale):
            if step.kind == "pass":
                total += len(tile_spans(width, self.tile)) * len(tile_spans(height, self.tile))
                width, height = width * step.factor, height * step.factor
            else:
                width, height = width // step.factor, height // step.factor
        return total

    def upscale(self, image: Image.Image, scale: int, on_step: OnStep | None = None) -> Image.Image:
        """``image`` enlarged ``scale`` times (exactly); ``on_step(done, total)`` after every tile
        of every pass — an exception it raises stops the upscale between tiles (the family base
        raises ``TaskStopped`` once the job's caller went away). Transparency is kept (alpha
        resized with Lanczos)."""
        import torch

        steps = self.plan(scale)
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidJobError("image", "the image is empty")
        rgb, alpha = _split_alpha(image)
        total = self.count_tiles(width, height, scale)
        done = 0

        def tile_done() -> None:
            nonlocal done
            done += 1
            if on_step is not None:
                on_step(done, total)

        with self._lock, torch.inference_mode():
            for step in steps:
                if step.kind == "pass":
                    rgb = self._pass(rgb, tile_done)
                else:
                    rgb = rgb.resize((rgb.width // step.factor, rgb.height // step.factor), Image.Resampling.LANCZOS)
        if rgb.size != (width * scale, height * scale):
            raise RuntimeError(f"upscale made {rgb.size}, expected {(width * scale, height * scale)}")
        if alpha is not None:
            rgb.putalpha(alpha.resize(rgb.size, Image.Resampling.LANCZOS))
        return rgb

    def _tiles(self, width: int, height: int) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        """``(core, context)`` boxes ``(x0, y0, x1, y1)`` covering a ``width`` x ``height`` image."""
        ov = self.overlap
        for y0, y1 in tile_spans(height, self.tile):
            for x0, x1 in tile_spans(width, self.tile):
                yield (x0, y0, x1, y1), (max(0, x0 - ov), max(0, y0 - ov), min(width, x1 + ov), min(height, y1 + ov))

    def _pass(self, image: Image.Image, tile_done: Callable[[], None]) -> Image.Image:
        """One tiled model pass over an RGB image."""
        import numpy as np
        import torch

        n = self.native_scale
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
        out = np.empty((image.height * n, image.width * n, 3), dtype=np.uint8)
        for (x0, y0, x1, y1), (cx0, cy0, cx1, cy1) in self._tiles(image.width, image.height):
            crop = pixels[:, :, cy0:cy1, cx0:cx1].to(device=self.device, dtype=self.dtype)
            result = self.descriptor(crop)
            core = result[0, :, (y0 - cy0) * n:(y1 - cy0) * n, (x0 - cx0) * n:(x1 - cx0) * n]
            out[y0 * n:y1 * n, x0 * n:x1 * n] = (
                core.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            )
            tile_done()
        return Image.fromarray(out, "RGB")


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The colour channels as RGB, and the alpha channel when the image has transparency."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    return (image if image.mode == "RGB" else image.convert("RGB")), None


def load_upscaler(path: str, *, device: str = "auto", dtype: str = "auto", tile: int = 256,
                  overlap: int = 16) -> Upscaler:
    """Load the super-resolution model at ``path`` (a weights file, or a directory holding one)."""
    import torch

    from deployments.loader import resolve_device, resolve_dtype
    from deployments.pipelines.spandrel_compat import import_spandrel

    spandrel = import_spandrel()
    file = weights_file(path)
    try:
        descriptor = spandrel.ModelLoader().load_from_file(file)
    except spandrel.UnsupportedModelError as exc:
        raise ValueError(f"{file.name}: not a model architecture spandrel knows") from exc
    except Exception as exc:  # a corrupt or foreign file: safetensors/pickle errors of every kind
        raise ValueError(f"{file.name}: could not be read as model weights ({type(exc).__name__})") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
        raise ValueError(f"{file.name}: a {descriptor.architecture.id} {descriptor.purpose} model, not a super-resolution "
                         "image model")
    if descriptor.scale not in NATIVE_SCALES:
        raise ValueError(f"{file.name}: native scale {descriptor.scale}x; allowed: {', '.join(map(str, NATIVE_SCALES))}")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ValueError(f"{file.name}: {descriptor.input_channels}->{descriptor.output_channels} channels; RGB (3->3) "
                         "models only")
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if (torch_dtype == torch.float16 and not descriptor.supports_half) or (
            torch_dtype == torch.bfloat16 and not descriptor.supports_bfloat16):
        logger.warning("%s does not support %s; running in float32", descriptor.architecture.id, torch_dtype)
        torch_dtype = torch.float32
    descriptor.to(device=device, dtype=torch_dtype)
    descriptor.eval()
    return Upscaler(descriptor, device=device, dtype=torch_dtype, tile=tile, overlap=overlap, source=file.name)
