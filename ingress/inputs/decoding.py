"""Decoded pixels on a budget.

An encoded image is small on the wire and large once decoded (a 128 KB PNG can hold 40 MP:
160 MB as Pillow stores it). Each ingress replica therefore has a :class:`DecodeBudget` of
decoded bytes, and every request decodes through its own :class:`ImageLoader`, which

* fetches inputs and reads their headers first (:func:`~ingress.inputs.images.fetch_image`), so
  every cheap check of the request — sizes, scale, aspect ratio — runs before any pixel is decoded;
* decodes one image at a time, reduced while decoding to the size the route will use
  (:func:`~ingress.inputs.images.decode_image`), after taking the decode's peak from the budget;
* keeps only the result's share once the decode is done, and gives it back when the request ends.

A request that cannot get its share within ``wait_seconds`` is refused with 503 and
``Retry-After`` (:class:`~ingress.contract.errors.Overloaded`); waiters are served in order.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from ingress.contract.errors import Overloaded
from ingress.inputs.fetch import FetchLimits
from ingress.inputs.images import FetchedImage, decode_image, decode_peak_bytes, decoded_bytes, fetch_image

MIB = 1024 * 1024


def memory_limit_bytes() -> int:
    """This process's memory limit: its cgroup's (v2, then v1) when set, else the machine's RAM."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
            return int(text)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget_bytes(memory: int | None = None) -> int:
    """A sixteenth of the memory limit, within 512 MiB..2 GiB."""
    memory = memory_limit_bytes() if memory is None else memory
    return min(2048 * MIB, max(512 * MIB, memory // 16))


class DecodeBudget:
    """Decoded bytes one replica holds at once, across all its requests (one event loop).

    ``take`` waits (first come, first served) up to ``wait_seconds`` for room, then refuses with
    :class:`Overloaded`; ``give`` returns bytes."""

    def __init__(self, max_bytes: int, wait_seconds: float, retry_after: int):
        if max_bytes < 1:
            raise ValueError("the decode budget must be positive")
        self.max_bytes = max_bytes
        self.wait_seconds = wait_seconds
        self.retry_after = retry_after
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def take(self, n: int) -> None:
        if n > self.max_bytes:
            raise ValueError(f"{n} bytes can never fit a budget of {self.max_bytes}")
        if not self._waiters and self.held + n <= self.max_bytes:
            self.held += n
            return
        waiter = (n, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter[1]), self.wait_seconds)
        except BaseException as exc:
            if waiter[1].done() and not waiter[1].cancelled():
                self.give(n)  # granted just as we gave up: hand it on
            else:
                waiter[1].cancel()
            if isinstance(exc, TimeoutError):
                raise Overloaded("too many images are being decoded at once; retry later", self.retry_after) from None
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                self._grant()

    def give(self, n: int) -> None:
        self.held -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.held + n > self.max_bytes:
                return
            self.held += n
            self._waiters.popleft()
            future.set_result(None)


class ImageLoader:
    """One request's image inputs: fetched (headers read) freely, decoded one at a time under the
    replica's :class:`DecodeBudget` (None: no budget, e.g. in tests), and released at the end
    (``async with``, or :meth:`release`)."""

    def __init__(self, limits: FetchLimits, budget: DecodeBudget | None = None):
        self.limits = limits
        self.budget = budget
        self.held = 0
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> ImageLoader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    async def fetch(self, value: str, field: str) -> FetchedImage:
        """The input's bytes and header (no pixels decoded)."""
        return await fetch_image(value, field, self.limits)

    async def decode(self, image: FetchedImage, size: tuple[int, int] | None = None,
                     resample: Image.Resampling = Image.Resampling.LANCZOS,
                     then: Callable[[Image.Image], Any] | None = None) -> Any:
        """``image`` decoded (RGB, oriented, reduced and resized to ``size`` with ``resample``), or
        ``then(decoded)`` computed in the same thread (e.g. re-encoded: the picture is then not kept)."""
        async with self._lock:  # one decode at a time per request
            taken = 0
            if self.budget is not None:
                # A decode larger than the whole budget waits for all of it (it then runs alone).
                taken = min(decode_peak_bytes(image, size), self.budget.max_bytes)
                await self.budget.take(taken)
            keep = 0
            try:
                result = await asyncio.to_thread(_decode_then, image, self.limits, size, resample, then)
                # What the request keeps: a picture is counted until it ends; anything else (bytes) is not.
                keep = min(taken, decoded_bytes(result.size)) if isinstance(result, Image.Image) else 0
            finally:
                if self.budget is not None:
                    self.budget.give(taken - keep)
            self.held += keep
        return result

    def release(self) -> None:
        """Give back what this request's decoded images hold."""
        if self.budget is not None and self.held:
            self.budget.give(self.held)
        self.held = 0


def _decode_then(image: FetchedImage, limits: FetchLimits, size: tuple[int, int] | None,
                 resample: Image.Resampling, then: Callable[[Image.Image], Any] | None) -> Any:
    decoded = decode_image(image, limits, size, resample)
    return decoded if then is None else then(decoded)
