"""Named VAEs: a per-family directory of ``AutoencoderKL`` folders, swapped in per call.

A request's ``vae`` names ``<directory>/<name>/`` (a ``save_pretrained``
AutoencoderKL: ``config.json`` + weights); nothing else is ever opened.
``swap_vae`` sets ``.vae`` on each given pipeline for one call and restores the
original afterwards, also when the call raises. ``from_pipe`` pipelines share
the VAE *module* but each holds its own ``.vae`` attribute, so every pipeline a
call may use must be swapped (pass them all, or a ``DiffusionPipelines``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from deployments.errors import InvalidJobError
from deployments.pipelines.lora import NAME_PATTERN

_LISTED_NAMES = 20


class VaeLibrary:
    """The named VAEs of one model family: ``<directory>/<name>/config.json``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise NotADirectoryError(f"VAE directory {self.directory} does not exist")

    def names(self) -> list[str]:
        """Sorted names of the VAE folders (read from disk on each call)."""
        return sorted(
            p.name for p in self.directory.iterdir()
            if NAME_PATTERN.fullmatch(p.name) and (p / "config.json").is_file()
        )

    def parse(self, vae: str | None) -> str | None:
        """Validate the request's ``vae``; ``None`` (or blank) means the model's own VAE."""
        if vae is None or (isinstance(vae, str) and not vae.strip()):
            return None
        if not isinstance(vae, str) or not NAME_PATTERN.fullmatch(vae.strip()):
            raise InvalidJobError("vae", f"invalid VAE name {str(vae)[:40]!r}: use letters, digits, '_', '.', '-'")
        name = vae.strip()
        names = self.names()
        if name not in names:
            shown = ", ".join(names[:_LISTED_NAMES]) or "none installed"
            more = f" (and {len(names) - _LISTED_NAMES} more)" if len(names) > _LISTED_NAMES else ""
            raise InvalidJobError("vae", f"unknown VAE {name!r}; available: {shown}{more}")
        return name

    def path(self, name: str) -> Path:
        """The folder of a name :meth:`parse` accepted."""
        parsed = self.parse(name)
        if parsed is None:
            raise ValueError("a blank VAE name has no folder (it means the model's own VAE)")
        return self.directory / parsed


def load_vae(path: str | Path, dtype, device: str):
    """Load an ``AutoencoderKL`` from a local folder onto ``device``.

    ``dtype``: a torch dtype or a name ``deployments.loader.resolve_dtype`` knows
    (e.g. ``DiffusionPipelines.dtype``).
    """
    from diffusers import AutoencoderKL

    from deployments.loader import resolve_dtype

    if isinstance(dtype, str):
        dtype = resolve_dtype(dtype, device)
    vae = AutoencoderKL.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    return vae.to(device).eval()


def _check_compatible(pipe, vae) -> None:
    old = pipe.vae
    shape = (old.config.latent_channels, len(old.config.block_out_channels))
    new = (vae.config.latent_channels, len(vae.config.block_out_channels))
    if shape != new:  # latent channels and vae_scale_factor must match the pipeline
        raise ValueError(f"VAE does not fit {type(pipe).__name__}: (latent channels, blocks) {new} != {shape}")
    if (old.device, old.dtype) != (vae.device, vae.dtype):
        raise ValueError(f"VAE on {vae.device}/{vae.dtype}, pipeline VAE on {old.device}/{old.dtype}")


@contextmanager
def swap_vae(pipes, vae) -> Iterator[None]:
    """Use ``vae`` in every pipeline of ``pipes`` inside the block; restore the originals.

    ``pipes``: an iterable of pipelines or a ``DiffusionPipelines``; ``vae=None``
    leaves them unchanged.
    """
    targets = _pipelines(pipes)
    if vae is None:
        yield
        return
    for pipe in targets:
        _check_compatible(pipe, vae)
    originals = [pipe.vae for pipe in targets]
    try:
        for pipe in targets:
            pipe.vae = vae
        yield
    finally:
        for pipe, original in zip(targets, originals):
            pipe.vae = original


def _pipelines(pipes) -> list:
    if hasattr(pipes, "text2img") and hasattr(pipes, "inpaint"):
        return [pipes.text2img, pipes.img2img, pipes.inpaint]
    if hasattr(pipes, "vae"):
        return [pipes]
    return list(pipes) if isinstance(pipes, Iterable) else [pipes]
