"""User-supplied images: decoding a URL's, ``data:`` URI's or bare base64's bytes into a
checked image (format by magic bytes, pixel count from the header first), and sizing it for an app.

URLs are fetched by the guarded client in :mod:`ingress.inputs.fetch`; every problem with an
input is an :class:`~ingress.contract.errors.InputFetchError` naming the request field.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from PIL import Image, UnidentifiedImageError

from ingress.contract.errors import InputFetchError, ValidationFailed
from ingress.inputs.fetch import FetchLimits, clip_text, fetch_url

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/_\-]+={0,2}$")
_WHITESPACE = re.compile(r"\s+")
_ORIENTATION = 0x0112  # EXIF tag
_TRANSPOSED = frozenset({5, 6, 7, 8})  # orientations that swap width and height
#: How each EXIF orientation is undone (as Pillow's ImageOps.exif_transpose does).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "YCbCr", "PA"})  # modes Image.reduce takes


@dataclass(frozen=True)
class FetchedImage:
    """An input's bytes and what its header says, before any pixel is decoded.

    ``width``/``height`` are the image as it will be shown (EXIF orientation applied)."""

    field: str
    data: bytes = dataclass_field(repr=False)
    format: str
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


async def load_image(value: str, field: str, limits: FetchLimits) -> Image.Image:
    """Load a user-supplied image and return it decoded, EXIF-oriented and in RGB mode, at its
    own size (:func:`fetch_image`, then :func:`decode_image`; no decode budget: callers that serve
    requests use :class:`ingress.inputs.decoding.ImageLoader`)."""
    fetched = await fetch_image(value, field, limits)
    return await asyncio.to_thread(decode_image, fetched, limits)


async def fetch_image(value: str, field: str, limits: FetchLimits) -> FetchedImage:
    """Fetch a user-supplied image's bytes and read its header, without decoding its pixels.

    ``value`` is one of:

    * an ``http://`` or ``https://`` URL, fetched under the SSRF rules of :mod:`ingress.inputs.fetch`;
    * a ``data:image/<type>;base64,<data>`` URI;
    * bare base64 (standard or URL-safe alphabet, padding optional, whitespace ignored) of
      the image bytes. A string containing ``:`` is never treated as bare base64: it is
      either one of the two forms above or refused.

    Whatever the source, the bytes must be (by magic bytes) one of ``limits.allowed_formats``,
    within ``limits.max_bytes`` and ``limits.max_pixels`` (read from the header).

    Raises:
        InputFetchError: For every problem with the input, naming ``field``.
    """
    if not isinstance(value, str):
        raise InputFetchError(field, "must be a string (URL, data URI or base64)")
    text = value.strip()
    if not text:
        raise InputFetchError(field, "is empty")
    # Cheap bound before any scanning: base64 is 4/3 of the bytes, plus generous slack for
    # line breaks and a data: header.
    if len(text) > limits.max_bytes * 3 // 2 + 4096:
        raise InputFetchError(field, f"image exceeds the limit of {limits.max_bytes} bytes")

    scheme_match = _SCHEME.match(text)
    if scheme_match is not None:
        scheme = scheme_match.group(1).lower()
        if scheme in ("http", "https"):
            data = await fetch_url(text, field, limits)
        elif scheme == "data":
            data = await asyncio.to_thread(_decode_data_uri, text, field, limits)
        else:
            raise InputFetchError(
                field, f"URL scheme {scheme!r} is not allowed; only http and https are"
            )
    else:
        data = await asyncio.to_thread(_decode_bare_base64, text, field, limits)
    return await asyncio.to_thread(read_header, data, field, limits)


def _decode_data_uri(text: str, field: str, limits: FetchLimits) -> bytes:
    # data:[<media type>][;param=value]*[;base64],<payload>   (RFC 2397)
    header, comma, payload = text[len("data:") :].partition(",")
    if not comma:
        raise InputFetchError(field, "is not a valid data URI (no ',' before the payload)")
    parts = [part.strip().lower() for part in header.split(";")]
    mime = parts[0]
    if not mime.startswith("image/"):
        raise InputFetchError(
            field, f"data URI media type {clip_text(mime, 60) or '(none)'!r} is not an image/* type"
        )
    if parts[-1] != "base64":
        raise InputFetchError(field, "data URI must be base64-encoded (';base64,')")
    return _b64decode(payload, field, limits, what="data URI payload")


def _decode_bare_base64(text: str, field: str, limits: FetchLimits) -> bytes:
    compact = _WHITESPACE.sub("", text)
    if len(compact) < 8 or not _BASE64_CHARS.match(compact):
        raise InputFetchError(field, _not_an_input(limits))
    return _b64decode(compact, field, limits, what=None)


def _not_an_input(limits: FetchLimits) -> str:
    return (
        "must be an http(s) URL, a data:image/...;base64 URI, or base64-encoded image bytes "
        f"in an allowed format ({', '.join(limits.allowed_formats)})"
    )


def _b64decode(payload: str, field: str, limits: FetchLimits, what: str | None) -> bytes:
    bad = f"{what} is not valid base64" if what else _not_an_input(limits)
    compact = _WHITESPACE.sub("", payload)
    # Refuse before decoding: 4 base64 characters carry 3 bytes.
    if (len(compact) // 4) * 3 > limits.max_bytes + 3:
        raise InputFetchError(field, f"image exceeds the limit of {limits.max_bytes} bytes")
    if not compact or not _BASE64_CHARS.match(compact):
        raise InputFetchError(field, bad)
    unpadded = compact.rstrip("=")
    if len(unpadded) % 4 == 1:
        raise InputFetchError(field, bad)
    padded = unpadded + "=" * (-len(unpadded) % 4)
    if "-" in padded or "_" in padded:
        padded = padded.replace("-", "+").replace("_", "/")
    try:
        data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InputFetchError(field, bad) from None
    if not data:
        raise InputFetchError(field, "image is empty")
    if len(data) > limits.max_bytes:
        raise InputFetchError(field, f"image exceeds the limit of {limits.max_bytes} bytes")
    if what is None:
        # Bare base64 that decodes to something Pillow cannot identify is most likely not
        # base64 at all; say so in terms of what the field accepts.
        _require_image_signature(data, field, limits)
    return data


def _require_image_signature(data: bytes, field: str, limits: FetchLimits) -> None:
    try:
        with Image.open(io.BytesIO(data), formats=list(limits.allowed_formats)):
            pass
    except Image.DecompressionBombError:
        return  # an image after all; read_header reports it properly
    except Exception:  # noqa: BLE001 - anything Pillow raises here means "not an image"
        raise InputFetchError(field, _not_an_input(limits)) from None


# ---------------------------------------------------------------------------------------------
# Decoding (runs in a worker thread)
# ---------------------------------------------------------------------------------------------


def read_header(data: bytes, field: str, limits: FetchLimits) -> FetchedImage:
    """Format, size and orientation from the header alone; every header-level refusal."""
    allowed = ", ".join(limits.allowed_formats)
    with _open(data, field, limits) as img:
        # Pillow reports multi-picture JPEGs (most phone photos) as MPO; they are JPEGs.
        image_format = "JPEG" if img.format == "MPO" else img.format
        if image_format not in limits.allowed_formats:
            raise InputFetchError(field, f"image format {img.format} is not allowed ({allowed})")
        width, height = img.size
        if width < 1 or height < 1:
            raise InputFetchError(field, "image has no pixels")
        if width * height > limits.max_pixels:
            raise InputFetchError(
                field,
                f"image is {width}x{height} = {width * height} pixels; the limit is "
                f"{limits.max_pixels}",
            )
        orientation = _orientation(img)
    if orientation in _TRANSPOSED:
        width, height = height, width
    return FetchedImage(field, data, str(image_format), width, height)


def decode_peak_bytes(image: FetchedImage, size: tuple[int, int] | None = None) -> int:
    """The most memory :func:`decode_image` holds at once for ``image`` decoded to ``size``: the
    decoded picture (at JPEG's draft scale when that applies; 4 bytes a pixel as Pillow stores RGB,
    plus 1 for a palette converted before reducing) and two copies at the output size."""
    width, height = _draft_size(image, size)
    out = size or image.size
    return width * height * 5 + 2 * out[0] * out[1] * 4


def decoded_bytes(size: tuple[int, int]) -> int:
    """What a decoded RGB image of ``size`` holds (Pillow stores RGB as 4 bytes a pixel)."""
    return size[0] * size[1] * 4


def decode_image(image: FetchedImage, limits: FetchLimits, size: tuple[int, int] | None = None,
                 resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Decode ``image`` (blocking; run it in a thread) into RGB, EXIF-oriented, and resized to ``size``
    when given, reduced on the way so that no more than it needs is held: a JPEG decodes at the
    smallest DCT scale (``draft``) that still covers ``size``, anything else is ``reduce``d by the
    largest integer factor that does, before orienting and the final ``resample`` resize. With
    ``resample`` NEAREST (masks) nothing is averaged: the full picture is resized directly."""
    with _open(image.data, image.field, limits) as img:
        orientation = _orientation(img)
        transposed = orientation in _TRANSPOSED
        want = None if size is None else ((size[1], size[0]) if transposed else size)  # as stored
        try:
            if want is not None and img.format in ("JPEG", "MPO"):
                img.draft("RGB", want)
            img.load()
            work: Image.Image = img
            if want is not None and resample != Image.Resampling.NEAREST:
                factor = min(work.width // want[0], work.height // want[1])
                if factor >= 2:
                    if work.mode not in _REDUCIBLE:
                        work = _to_rgb(work)
                    work = work.reduce(factor)
            method = _TRANSPOSE.get(orientation)
            oriented = work.transpose(method) if method is not None else work
            if oriented is img:  # detach from the file-backed image closed below
                oriented = img.copy()
            rgb = _to_rgb(oriented)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputFetchError(image.field, f"image has more than {limits.max_pixels} pixels") from None
        except Exception:  # noqa: BLE001 - truncated/corrupt data of any kind
            raise InputFetchError(image.field, "image data is corrupt or truncated") from None
    if size is not None and rgb.size != size:
        rgb = rgb.resize(size, resample)
    return rgb


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation found while the header was read (``info["exif"]``). Never ``getexif()``:
    for a PNG that decodes the whole picture to look for an eXIf chunk after the pixels; such a late
    chunk is ignored here, as it is when decoding, so the size predicted and the size made agree."""
    raw = img.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: shown as stored
        return 1
    return value if isinstance(value, int) else 1


@contextmanager
def _open(data: bytes, field: str, limits: FetchLimits) -> Iterator[Image.Image]:
    """``Image.open`` (the header only), restricted to the allowed formats, refusals named."""
    allowed = ", ".join(limits.allowed_formats)
    try:
        # formats= restricts which decoders may even try.
        img = Image.open(io.BytesIO(data), formats=list(limits.allowed_formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # The warning is only raised when warnings are configured as errors.
        raise InputFetchError(field, f"image has more than {limits.max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise InputFetchError(field, f"is not an image in an allowed format ({allowed})") from None
    except Exception:  # noqa: BLE001 - malformed header of any kind is bad input
        raise InputFetchError(field, "image could not be read: its header is malformed") from None
    try:
        yield img
    finally:
        img.close()


def _draft_size(image: FetchedImage, size: tuple[int, int] | None) -> tuple[int, int]:
    """The size a JPEG decodes at with ``draft`` toward ``size`` (scales 1/2, 1/4, 1/8); others: their own."""
    width, height = image.size
    if size is None or image.format != "JPEG":
        return width, height
    scale = 1
    while scale < 8 and width // (scale * 2) >= size[0] and height // (scale * 2) >= size[1]:
        scale *= 2
    return -(-width // scale), -(-height // scale)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("P", "PA") or (img.mode in ("L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA")
    return img.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Sizing for an app
# ---------------------------------------------------------------------------------------------


def fit_size(size: tuple[int, int], max_width: int, max_height: int) -> tuple[int, int]:
    """``size`` as it is, or shrunk (aspect kept) until it fits ``max_width`` x ``max_height``;
    never enlarged, never rounded (tasks whose output follows the input's own size)."""
    iw, ih = size
    scale = min(1.0, max_width / iw, max_height / ih)
    if scale >= 1.0:
        return size
    return max(1, math.floor(iw * scale)), max(1, math.floor(ih * scale))


def fit_within(image: Image.Image, max_width: int, max_height: int) -> Image.Image:
    """``image`` shrunk as :func:`fit_size` says (Lanczos), or as it is."""
    size = fit_size(image.size, max_width, max_height)
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def size_for_app(size: tuple[int, int], width: int | None, height: int | None, app_id: str, lim: Any) -> tuple[int, int]:
    """The size an input image of ``size`` is given for a job, always within the app's limits
    (``lim``: its ``AppLimits``); from the header alone, so a refusal costs no decoding.

    Both ``width`` and ``height``: that size (already checked against the app).
    One of them: the other follows from the image's aspect ratio, rounded to a
    multiple of 64, and must fall within the app's range (else a 422 naming it).
    Neither: the image is scaled, aspect kept, until both sides are within the
    app's ranges (down if larger, up if smaller), then rounded down to multiples
    of 64; an aspect ratio no size in the ranges can keep is a 422.
    """
    ranges = {"width": _range64(lim.width.min, lim.width.max), "height": _range64(lim.height.min, lim.height.max)}
    iw, ih = size
    if width and height:
        return width, height
    if width:
        return _one_side(size, "width", width, ranges, app_id)
    if height:
        return _one_side(size, "height", height, ranges, app_id)
    (wlo, whi), (hlo, hhi) = ranges["width"], ranges["height"]
    scale = min(1.0, whi / iw, hhi / ih)
    scale = max(scale, wlo / iw, hlo / ih)
    if iw * scale > whi * 1.001 or ih * scale > hhi * 1.001:
        raise ValidationFailed(
            f"image: its aspect ratio ({iw}x{ih}) cannot fit app {app_id}'s sizes; allowed: width "
            f"{wlo}..{whi}, height {hlo}..{hhi}; crop it, or send width and height"
        )
    w = min(whi, max(wlo, math.floor(iw * scale / 64) * 64))
    h = min(hhi, max(hlo, math.floor(ih * scale / 64) * 64))
    return w, h


def _one_side(
    size: tuple[int, int], given: str, value: int, ranges: dict[str, tuple[int, int]], app_id: str
) -> tuple[int, int]:
    """Only ``given`` (``width`` or ``height``) is ``value``: the other side follows from the aspect ratio."""
    iw, ih = size
    other = "height" if given == "width" else "width"
    derived = max(64, round((ih * value / iw if given == "width" else iw * value / ih) / 64) * 64)
    lo, hi = ranges[other]
    if not lo <= derived <= hi:
        raise ValidationFailed(
            f"{other}: from the input image's aspect ratio ({iw}x{ih}) and {given} {value} it would be "
            f"{derived}, outside app {app_id}'s range; allowed: {lo}..{hi}; send both width and height"
        )
    return (value, derived) if given == "width" else (derived, value)


def _range64(lo: float, hi: float) -> tuple[int, int]:
    """The multiples of 64 within ``lo..hi``, as an inclusive range."""
    return int(math.ceil(lo / 64) * 64), int(math.floor(hi / 64) * 64)
