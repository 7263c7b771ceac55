"""LoRA stacks: validate a request, load adapters into a pipeline, apply them per call.

Request fields (the public API):

* ``lora_model``: comma-separated LoRA names, at most :data:`MAX_LORAS`, no
  duplicates. A name is ``[A-Za-z0-9][A-Za-z0-9_.-]*`` and means the file
  ``<directory>/<name>.safetensors`` of the family's configured LoRA directory;
  nothing else is ever opened (no paths, no URLs).
* ``lora_strength``: comma-separated numbers in [0.1, 1]: either one per name (in
  ``lora_model`` order) or a single one for every name. Omitted → 1.0 each.
  A strength without ``lora_model`` is an error, not ignored.

Loading and applying (peft backend of diffusers):

* :func:`load_stack` loads each LoRA with ``pipe.load_lora_weights(path,
  adapter_name=...)``. Adapters live in the pipeline's UNet and text encoders,
  which the text2img/img2img/inpaint pipelines share (``from_pipe``), so they act
  on all three; adapters are reference-counted per UNet, so two stacks holding the
  same LoRA share one copy and evicting one stack keeps the other intact.
* Each call then either :func:`activate` (``enable_lora`` + ``set_adapters`` with
  that call's strengths) or :func:`deactivate` (``disable_lora``: the base weights
  exactly, bit for bit). Strengths are per call, so they are not part of
  :attr:`LoraRequest.stack_id`. Note ``set_adapters`` alone does not undo
  ``disable_lora``, and ``set_adapters([])`` raises in diffusers 0.42: hence
  ``enable_lora``/``disable_lora``.
* The pipeline state is global to the replica: one generation at a time, and
  loading/unloading must not overlap a generation (see :class:`LoadedStack`).
"""

from __future__ import annotations

import logging
import math
import re
import weakref
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from deployments.errors import InvalidJobError

logger = logging.getLogger("deployments.pipelines.lora")

MAX_LORAS = 5
MIN_STRENGTH = 0.1
MAX_STRENGTH = 1.0
DEFAULT_STRENGTH = 1.0
SUFFIX = ".safetensors"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_LISTED_NAMES = 20  # names an error message lists at most


@dataclass(frozen=True)
class LoraRequest:
    """A validated LoRA request: names in request order and one strength per name."""

    names: tuple[str, ...]
    strengths: tuple[float, ...]

    @property
    def stack_id(self) -> str:
        """Canonical id of the adapter set (sorted names; strengths excluded)."""
        return ",".join(sorted(self.names))


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _allowed(names: list[str]) -> str:
    if not names:
        return "no LoRAs are installed for this model"
    shown = ", ".join(names[:_LISTED_NAMES])
    more = len(names) - _LISTED_NAMES
    return f"available: {shown}" + (f" (and {more} more)" if more > 0 else "")


class LoraLibrary:
    """The LoRA files of one model family: ``<directory>/<name>.safetensors``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise NotADirectoryError(f"LoRA directory {self.directory} does not exist")

    def names(self) -> list[str]:
        """Sorted names of the valid LoRA files (read from disk on each call)."""
        return sorted(
            p.name[: -len(SUFFIX)]
            for p in self.directory.iterdir()
            if p.name.endswith(SUFFIX) and p.is_file()
            and NAME_PATTERN.fullmatch(p.name[: -len(SUFFIX)])
        )

    def path(self, name: str) -> Path:
        """The file of LoRA ``name``; ``InvalidJobError("lora_model")`` if there is none."""
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise InvalidJobError(
                "lora_model", f"invalid LoRA name {str(name)[:40]!r}: use letters, digits, '_', '.', '-'"
            )
        names = self.names()
        if name not in names:
            raise InvalidJobError("lora_model", f"unknown LoRA {name!r}; {_allowed(names)}")
        return self.directory / f"{name}{SUFFIX}"

    def parse(self, lora_model: str | None, lora_strength: str | float | None) -> LoraRequest | None:
        """Validate the two request fields; ``None`` when no LoRA is asked for."""
        if _blank(lora_model):
            if not _blank(lora_strength):
                raise InvalidJobError("lora_strength", "given without lora_model")
            return None
        if not isinstance(lora_model, str):
            raise InvalidJobError("lora_model", "must be a string of comma-separated LoRA names")
        names = [part.strip() for part in lora_model.split(",")]
        if any(not name for name in names):
            raise InvalidJobError("lora_model", "empty name in the comma-separated list")
        if len(names) > MAX_LORAS:
            raise InvalidJobError("lora_model", f"at most {MAX_LORAS} LoRAs per request, got {len(names)}")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise InvalidJobError("lora_model", f"duplicate LoRA names: {', '.join(duplicates)}")
        for name in names:
            self.path(name)
        return LoraRequest(tuple(names), _parse_strengths(lora_strength, len(names)))


def _parse_strengths(value: str | float | None, count: int) -> tuple[float, ...]:
    if _blank(value):
        return (DEFAULT_STRENGTH,) * count
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidJobError("lora_strength", "must be a number or comma-separated numbers")
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else [value]
    strengths = []
    for part in parts:
        try:
            number = float(part)
        except ValueError:
            raise InvalidJobError("lora_strength", f"not a number: {str(part)[:20]!r}") from None
        if not math.isfinite(number) or not MIN_STRENGTH <= number <= MAX_STRENGTH:
            raise InvalidJobError(
                "lora_strength", f"each strength must be between {MIN_STRENGTH} and {MAX_STRENGTH}, got {part}"
            )
        strengths.append(number)
    if len(strengths) == 1:
        return (strengths[0],) * count
    if len(strengths) != count:
        raise InvalidJobError(
            "lora_strength", f"{len(strengths)} strengths for {count} LoRAs: give one per LoRA or a single one"
        )
    return tuple(strengths)


# ---- adapters in a pipeline ------------------------------------------------------------

# UNet module → {adapter name: number of loaded stacks using it}
_REFCOUNTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def adapter_name(name: str) -> str:
    """The peft adapter name of LoRA ``name`` ('.' is not allowed in module keys).

    An injective escape: ``_`` → ``__``, ``.`` → ``_d``.
    """
    return name.replace("_", "__").replace(".", "_d")


def _refcounts(pipe) -> Counter:
    return _REFCOUNTS.setdefault(pipe.unet, Counter())


def loaded_adapters(pipe) -> set[str]:
    """Adapter names present in any LoRA-loadable module of ``pipe``."""
    return {a for adapters in pipe.get_list_adapters().values() for a in adapters}


def _acquire(pipe, library: LoraLibrary, name: str) -> None:
    refs, adapter = _refcounts(pipe), adapter_name(name)
    if refs[adapter] == 0:
        path = library.path(name)
        pipe.load_lora_weights(str(path), adapter_name=adapter)
        if adapter not in loaded_adapters(pipe):
            raise ValueError(f"LoRA file {path} matched no layer of this pipeline")
    refs[adapter] += 1


def _release(pipe, name: str) -> None:
    refs, adapter = _refcounts(pipe), adapter_name(name)
    refs[adapter] -= 1
    if refs[adapter] == 0:
        del refs[adapter]
        if adapter in loaded_adapters(pipe):
            pipe.delete_adapters([adapter])


def activate(pipe, names: Sequence[str], strengths: Sequence[float]) -> None:
    """Use exactly these loaded LoRAs at these strengths for the next calls."""
    if len(names) != len(strengths):
        raise ValueError(f"{len(names)} names but {len(strengths)} strengths")
    pipe.enable_lora()
    pipe.set_adapters([adapter_name(n) for n in names], adapter_weights=[float(s) for s in strengths])


def deactivate(pipe) -> None:
    """Use the base weights (every adapter off) for the next calls."""
    pipe.disable_lora()


def unload(pipe, names: Sequence[str]) -> None:
    """Release ``names``; an adapter no stack uses any more is deleted (memory freed)."""
    refs = _refcounts(pipe)
    missing = [n for n in names if refs[adapter_name(n)] < names.count(n)]
    if missing:
        raise ValueError(f"LoRAs not loaded in this pipeline: {missing}")
    for name in names:
        _release(pipe, name)


class LoadedStack:
    """A set of LoRAs loaded into one pipeline; what a ``@serve.multiplexed`` loader returns.

    Serve (2.60, ``ray/serve/multiplex.py``) evicts the least recently used model
    by calling its ``__del__`` (a sync one in the default thread pool executor,
    awaited) and then replaces the *instance* attribute ``__del__``; Python's own
    finalizer still calls the class ``__del__`` later, so :meth:`unload` is
    idempotent. Eviction happens inside the loader call for a new stack id, so
    the deployment must call the loader and run the generation under one lock
    (never taken here) so that no generation runs while adapters are deleted::

        @serve.multiplexed(max_num_models_per_replica=N)
        async def stack(self, stack_id: str) -> LoadedStack:  # LoraRequest.stack_id
            return await asyncio.to_thread(load_stack, self.pipe, self.loras, stack_id.split(","))

        async with self.lock:  # per request; an empty id must not reach self.stack()
            if request is None:
                deactivate(self.pipe)
            else:
                (await self.stack(serve.get_multiplexed_model_id())).activate(request)
            ...  # generate
    """

    def __init__(self, pipe, library: LoraLibrary, names: Sequence[str], lock: AbstractContextManager | None = None):
        self._names: tuple[str, ...] = ()
        # The replica's model lock: loading and unloading never overlap a generation, even one
        # whose request was cancelled while its thread still runs (an RLock: a finalizer may
        # run on the generating thread).
        self._lock = lock if lock is not None else nullcontext()
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"a stack needs distinct names, got {list(names)}")
        acquired: list[str] = []
        with self._lock:
            try:
                for name in names:
                    _acquire(pipe, library, name)
                    acquired.append(name)
            except BaseException:
                unload(pipe, acquired)
                raise
            deactivate(pipe)  # loading activates the new adapter; leave the base weights on
        self.pipe = pipe
        self._names = tuple(names)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def stack_id(self) -> str:
        return ",".join(sorted(self._names))

    def activate(self, request: LoraRequest) -> None:
        """Turn this stack on at ``request``'s strengths (its names must be this stack's)."""
        if sorted(request.names) != sorted(self._names):
            raise ValueError(f"request {request.stack_id!r} does not match stack {self.stack_id!r}")
        activate(self.pipe, request.names, request.strengths)

    def unload(self) -> None:
        """Release this stack's adapters; later calls do nothing."""
        names, self._names = self._names, ()
        if names:
            with self._lock:
                unload(self.pipe, names)

    def __del__(self):
        try:
            self.unload()
        except Exception:
            logger.exception("unloading LoRA stack %s failed", getattr(self, "_names", ()))


def load_stack(
    pipe, library: LoraLibrary, names: Sequence[str], lock: AbstractContextManager | None = None
) -> LoadedStack:
    """Load ``names`` into ``pipe`` (any of the pipelines sharing its modules), under ``lock``."""
    return LoadedStack(pipe, library, names, lock)
