"""Decoded pixels on a budget: the replica's budget, a request's loader, and decoding reduced to the size used."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from ingress.contract.errors import InputFetchError, Overloaded
from ingress.inputs import FetchLimits
from ingress.inputs.decoding import DecodeBudget, ImageLoader, default_budget_bytes
from ingress.inputs.images import decode_image, decode_peak_bytes, decoded_bytes, fetch_image, read_header

MIB = 1024 * 1024
LIMITS = FetchLimits()


def encoded(size, fmt="PNG", mode="RGB", exif_orientation=None) -> bytes:
    image = Image.new(mode, size, (200, 30, 10) if mode == "RGB" else 0)
    buf = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buf, fmt, exif=exif)
    else:
        image.save(buf, fmt)
    return buf.getvalue()


def uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


# -- the budget ----------------------------------------------------------------------------------


def test_the_default_budget_follows_the_memory_within_bounds():
    assert default_budget_bytes(4 * 1024 * MIB) == 512 * MIB
    assert default_budget_bytes(24 * 1024 * MIB) == 1536 * MIB
    assert default_budget_bytes(256 * 1024 * MIB) == 2048 * MIB
    assert 512 * MIB <= default_budget_bytes() <= 2048 * MIB  # this machine's own


def test_a_request_that_cannot_get_its_share_waits_briefly_then_is_a_503():
    async def go():
        budget = DecodeBudget(100, wait_seconds=0.2, retry_after=3)
        await budget.take(80)
        with pytest.raises(Overloaded) as info:
            await budget.take(30)
        assert info.value.status_code == 503 and info.value.headers == {"Retry-After": "3"}
        assert budget.held == 80 and not budget._waiters  # the refused one holds nothing and waits no more
        with pytest.raises(ValueError):
            await budget.take(101)  # never fits: a bug of the caller, not a client's 503

    asyncio.run(go())


def test_waiters_are_served_in_order_and_a_cancelled_one_gives_back_what_it_got():
    async def go():
        budget = DecodeBudget(100, wait_seconds=5, retry_after=1)
        await budget.take(90)
        order: list[str] = []

        async def want(name, n):
            await budget.take(n)
            order.append(name)

        big = asyncio.create_task(want("big", 60))
        await asyncio.sleep(0)
        small = asyncio.create_task(want("small", 5))  # would fit now, but waits behind the big one
        await asyncio.sleep(0.05)
        assert order == []
        budget.give(90)
        await asyncio.gather(big, small)
        assert order == ["big", "small"] and budget.held == 65
        waiting = asyncio.create_task(budget.take(50))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        budget.give(65)
        assert budget.held == 0 and not budget._waiters

    asyncio.run(go())


# -- decoding --------------------------------------------------------------------------------------


def test_the_header_is_read_without_decoding_and_orientation_swaps_the_sides():
    image = read_header(encoded((300, 200), "JPEG", exif_orientation=6), "image", LIMITS)
    assert (image.format, image.size) == ("JPEG", (200, 300))
    assert decode_image(image, LIMITS).size == (200, 300)
    assert decode_image(image, LIMITS, (100, 150)).size == (100, 150)


def test_reading_the_header_never_decodes_the_pixels(monkeypatch):
    """Pillow's ``getexif()`` on a PNG loads the whole picture (to look for an eXIf chunk after it):
    eight such headers read at once once cost 800 MB. The header read must not load any picture."""
    from PIL import ImageFile

    def no_load(self):
        raise AssertionError("the header read decoded the pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert read_header(encoded((640, 480), fmt, exif_orientation=8), "image", LIMITS).size == (480, 640)


def test_a_large_image_is_reduced_while_decoding_to_the_size_used():
    big = read_header(encoded((6000, 6600)), "image", LIMITS)
    assert decode_peak_bytes(big, (1024, 1126)) == 6000 * 6600 * 5 + 2 * 1024 * 1126 * 4
    out = decode_image(big, LIMITS, (1024, 1126))
    assert out.size == (1024, 1126) and out.mode == "RGB" and out.getpixel((10, 10)) == (200, 30, 10)
    jpeg = read_header(encoded((4000, 4000), "JPEG"), "image", LIMITS)
    # JPEG decodes at the smallest DCT scale that covers the size: 1/4 here (1000 px), not the full 16 MP.
    assert decode_peak_bytes(jpeg, (900, 900)) == 1000 * 1000 * 5 + 2 * 900 * 900 * 4
    assert decode_image(jpeg, LIMITS, (900, 900)).size == (900, 900)


def test_a_mask_is_resized_without_averaging():
    mask = Image.new("L", (4000, 4000), 0)
    mask.paste(255, (0, 0, 2001, 4000))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    out = decode_image(read_header(buf.getvalue(), "mask_url", LIMITS), LIMITS, (512, 512), Image.Resampling.NEAREST)
    assert {value for _, value in out.convert("L").getcolors()} == {0, 255}


def test_corrupt_pixels_are_refused_naming_the_field():
    data = encoded((64, 64))
    truncated = data[: len(data) // 2] + b"\0" * 8
    image = read_header(truncated, "image", LIMITS)
    with pytest.raises(InputFetchError, match="^image: image data is corrupt or truncated$"):
        decode_image(image, LIMITS, (32, 32))


# -- one request's loader --------------------------------------------------------------------------


def test_a_loader_decodes_one_at_a_time_keeps_the_results_share_and_gives_it_back():
    async def go():
        budget = DecodeBudget(512 * MIB, wait_seconds=1, retry_after=1)
        peaks: list[int] = []
        real_take = budget.take

        async def take(n):
            peaks.append(n)
            await real_take(n)
            assert budget.held <= n + 2 * decoded_bytes((512, 512))  # nothing else decodes meanwhile

        budget.take = take  # type: ignore[method-assign]
        async with ImageLoader(LIMITS, budget) as loader:
            images = await asyncio.gather(*(loader.fetch(uri(encoded((3000, 2000))), f"image{i}") for i in range(2)))
            decoded = await asyncio.gather(*(loader.decode(image, (512, 512)) for image in images))
            assert [d.size for d in decoded] == [(512, 512)] * 2
            assert budget.held == loader.held == 2 * decoded_bytes((512, 512))
            encoded_only = await loader.decode(images[0], (64, 64), then=lambda im: b"bytes")
            assert encoded_only == b"bytes" and budget.held == 2 * decoded_bytes((512, 512))  # bytes are not kept
        assert budget.held == 0 and peaks[0] == decode_peak_bytes(images[0], (512, 512))

    asyncio.run(go())


def test_a_failed_decode_gives_back_all_it_took():
    async def go():
        budget = DecodeBudget(512 * MIB, wait_seconds=1, retry_after=1)
        data = encoded((640, 480))
        async with ImageLoader(LIMITS, budget) as loader:
            image = await fetch_image(uri(data[: len(data) // 2] + b"\0" * 8), "image", LIMITS)
            with pytest.raises(InputFetchError):
                await loader.decode(image, (320, 240))
            assert budget.held == 0

    asyncio.run(go())


def test_concurrent_requests_past_the_budget_get_a_503_and_the_budget_is_whole_after():
    """Six requests each decoding a 3000x2000 picture (~31 MB at its peak) against a 64 MiB budget
    that only one waits 50 ms for: some are refused (503), none is lost, and nothing stays held."""
    async def go():
        budget = DecodeBudget(64 * MIB, wait_seconds=0.05, retry_after=2)
        data = uri(encoded((3000, 2000)))

        async def request():
            async with ImageLoader(LIMITS, budget) as loader:
                image = await loader.fetch(data, "image")
                await loader.decode(image, (1536, 1024))
                await asyncio.sleep(0.2)  # the job runs while its input is held
                return "ok"

        results = await asyncio.gather(*(request() for _ in range(6)), return_exceptions=True)
        assert all(r == "ok" or isinstance(r, Overloaded) for r in results)
        assert "ok" in results and any(isinstance(r, Overloaded) for r in results)
        assert budget.held == 0

    asyncio.run(go())
