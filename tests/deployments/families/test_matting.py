from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from deployments.errors import InvalidJobError
from deployments.families.matting import MattingFamily
from deployments.pipelines.tiny_saliency import draw_subject, write_tiny_saliency
from deployments.types import MattingJob
from tests.deployments.conftest import MemoryStore

SIZE = (203, 141)
BOX = (110, 20, 190, 120)  # right of centre
MAX_SIDE = 320


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_saliency(tmp_path_factory.mktemp("tiny-saliency"))


@pytest.fixture(scope="module")
def family(tiny_dir) -> MattingFamily:
    store: Any = MemoryStore()  # the ObjectStore calls a family makes
    return MattingFamily(str(tiny_dir), store=store, family="rmbg", gpu="a10g", max_side=MAX_SIDE,
                         revision="ignored", dtype="float16", device="cpu")


@pytest.fixture(scope="module")
def scene():
    return draw_subject(SIZE, BOX)


def job(image, request_id="r-1", **kw) -> MattingJob:
    return MattingJob(task="remove_background", tenant="acme", request_id=request_id, image=image, **kw)


def run(family: MattingFamily, j: MattingJob) -> tuple[Image.Image, dict, dict]:
    """Run the job; return the stored PNG decoded, its output meta and the result meta."""
    result = asyncio.run(family.run(j))
    assert len(result.outputs) == 1
    output = result.outputs[0]
    store: Any = family.store
    data, content_type = store.objects[output.key]
    assert content_type == "image/png" == output.content_type
    assert output.key == f"tenants/acme/images/{j.request_id}/0.png"
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image, output.meta, result.meta


def regions(mask: Image.Image, margin: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Pixels well inside and well outside the subject (the mask may be soft at the edge)."""
    inside = np.asarray(mask.filter(ImageFilter.MinFilter(margin))) == 255
    outside = np.asarray(mask.filter(ImageFilter.MaxFilter(margin))) == 0
    return inside, outside


def test_default_is_a_transparent_png_with_the_subject_as_alpha(family, scene):
    image, true = scene
    out, meta, result_meta = run(family, job(image, "r-transparent"))
    assert out.mode == "RGBA" and out.size == SIZE
    assert meta == result_meta == {"width": SIZE[0], "height": SIZE[1], "mode": "transparent"}
    alpha = np.asarray(out)[..., 3]
    inside, outside = regions(true)
    assert alpha[inside].min() >= 250 and alpha[outside].max() <= 5
    want = np.asarray(true) > 127
    assert ((alpha > 127) & want).sum() / ((alpha > 127) | want).sum() > 0.9
    assert np.array_equal(np.asarray(out)[..., :3], np.asarray(image))


def test_bg_color_fills_the_background_exactly(family, scene):
    image, true = scene
    out, meta, _ = run(family, job(image, "r-color", bg_color=[255, 255, 0]))
    assert out.mode == "RGB" and meta["mode"] == "color"
    pixels = np.asarray(out)
    inside, outside = regions(true)
    assert np.all(pixels[outside] == (255, 255, 0))
    assert np.array_equal(pixels[inside], np.asarray(image)[inside])


def test_bg_image_goes_behind_the_subject(family, scene):
    image, true = scene
    background = Image.new("RGB", (50, 300), (10, 200, 90))  # another size and shape: covered, cropped
    out, meta, _ = run(family, job(image, "r-image", bg_image=background))
    assert out.mode == "RGB" and out.size == SIZE and meta["mode"] == "image"
    pixels = np.asarray(out)
    inside, outside = regions(true)
    assert np.all(pixels[outside] == (10, 200, 90))
    assert np.array_equal(pixels[inside], np.asarray(image)[inside])


def test_blur_blurs_the_background_only(family, scene):
    image, true = scene
    out, meta, _ = run(family, job(image, "r-blur", blur=True))
    assert out.mode == "RGB" and meta["mode"] == "blur"
    pixels, original = np.asarray(out).astype(int), np.asarray(image).astype(int)
    inside, outside = regions(true)
    assert np.array_equal(pixels[inside], original[inside])
    assert np.abs(pixels[outside] - original[outside]).mean() > 5


@pytest.mark.parametrize(("fields", "names"), [
    ({"bg_color": [0, 0, 0], "blur": True}, ["bg_color", "blur"]),
    ({"bg_image": Image.new("RGB", (8, 8)), "bg_color": [0, 0, 0]}, ["bg_image", "bg_color"]),
    ({"bg_image": Image.new("RGB", (8, 8)), "blur": True}, ["bg_image", "blur"]),
    ({"bg_image": Image.new("RGB", (8, 8)), "bg_color": [0, 0, 0], "blur": True}, ["bg_image", "bg_color", "blur"]),
])
def test_conflicting_modes_are_refused_naming_the_fields(family, scene, fields, names):
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(family.run(job(scene[0], "r-conflict", **fields)))
    for name in names:
        assert name in info.value.field
    assert "at most one of bg_image, bg_color, blur" in info.value.public


@pytest.mark.parametrize("color", [[0, 0, 256], [-1, 0, 0], [0, 0], [0, 0, 0, 0], [0.5, 0, 0], [True, 0, 0], "#fff"])
def test_bad_bg_color_is_refused(family, scene, color):
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(family.run(job(scene[0], "r-bad-color", bg_color=color)))
    assert info.value.field == "bg_color"
    assert "0..255" in info.value.public


@pytest.mark.parametrize(("name", "size"), [("image", (MAX_SIDE + 1, 10)), ("image", (10, MAX_SIDE + 1)),
                                            ("bg_image", (MAX_SIDE + 1, 10))])
def test_images_over_max_side_are_refused(family, scene, name, size):
    images = {"image": scene[0], name: Image.new("RGB", size)}
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(family.run(job(**images, request_id="r-big")))
    assert info.value.field == name
    assert str(MAX_SIDE) in info.value.public


def test_missing_image_and_other_tasks_are_refused(family, scene):
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(family.run(job(None, "r-none")))
    assert info.value.field == "image"
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(family.run(MattingJob(task="upscale", tenant="acme", request_id="r-x", image=scene[0])))
    assert info.value.field == "task"


def test_produce_reports_its_one_step(family, scene):
    steps = []
    produced = family.produce(job(scene[0]), lambda done, total: steps.append((done, total)))
    assert steps == [(1, 1)]
    assert produced.mode == "transparent"


def test_mask_for_other_families(family, scene):
    image, true = scene
    store: Any = family.store
    before = dict(store.objects)
    mask = asyncio.run(family.mask(image.convert("RGBA")))
    assert mask.mode == "L" and mask.size == SIZE
    inside, outside = regions(true)
    got = np.asarray(mask)
    assert got[inside].min() >= 250 and got[outside].max() <= 5
    assert store.objects == before  # nothing stored


def test_mask_refuses_big_images(family):
    with pytest.raises(InvalidJobError) as info:
        asyncio.run(family.mask(Image.new("RGB", (MAX_SIDE + 1, 8))))
    assert info.value.field == "image"


def test_facts_and_health(family, tiny_dir):
    assert family.loaded()
    info = family.info()
    assert info["kind"] == "matting" and info["family"] == "rmbg" and info["gpu"] == "a10g"
    assert info["tasks"] == ["remove_background"]
    assert info["model_source"] == str(tiny_dir)
    assert info["input_size"] == [256, 256]
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["max_side"] == MAX_SIDE
    asyncio.run(family.check_health())


def test_a_directory_without_a_model_is_refused(tmp_path):
    store: Any = MemoryStore()
    with pytest.raises(FileNotFoundError):
        MattingFamily(str(tmp_path), store=store)
