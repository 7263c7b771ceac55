from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from deployments.errors import InvalidJobError
from deployments.pipelines.compositing import (
    blur_radius,
    blurred,
    cover,
    cutout,
    keep_subject,
    on_color,
    on_image,
    parse_hex_color,
)
from deployments.pipelines.tiny_saliency import draw_subject

SIZE = (161, 97)
BOX = (20, 15, 90, 80)


@pytest.fixture(scope="module")
def scene() -> tuple[Image.Image, Image.Image]:
    return draw_subject(SIZE, BOX)


def soft_mask(size=(8, 4)) -> Image.Image:
    """0 on the left, 255 on the right, 128 in one column between."""
    row = np.array([0, 0, 0, 128, 255, 255, 255, 255], np.uint8)[: size[0]]
    return Image.fromarray(np.tile(row, (size[1], 1)), "L")


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def test_cutout_alpha_is_the_mask(scene):
    image, mask = scene
    out = cutout(image, mask)
    assert out.mode == "RGBA" and out.size == SIZE
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(mask))
    assert np.array_equal(np.asarray(out)[..., :3], np.asarray(image))


def test_a_mask_of_another_size_is_resized(scene):
    image, mask = scene
    out = cutout(image, mask.resize((SIZE[0] // 2, SIZE[1] // 2), Image.Resampling.NEAREST))
    assert out.size == SIZE
    alpha = np.asarray(out)[..., 3]
    inside = np.asarray(mask.filter(ImageFilter.MinFilter(7))) == 255
    outside = np.asarray(mask.filter(ImageFilter.MaxFilter(7))) == 0
    assert alpha[inside].min() == 255 and alpha[outside].max() == 0


def test_modes_are_normalised(scene):
    image, mask = scene
    out = on_color(image.convert("RGBA"), mask.convert("RGB"), (1, 2, 3))
    assert out.mode == "RGB"
    inside = np.asarray(mask) == 255
    assert np.array_equal(np.asarray(out)[inside], np.asarray(image)[inside])


def test_on_color_exact_outside_and_inside(scene):
    image, mask = scene
    out = on_color(image, mask, (12, 200, 34))
    assert out.mode == "RGB" and out.size == SIZE
    pixels, m = np.asarray(out), np.asarray(mask)
    assert np.all(pixels[m == 0] == (12, 200, 34))
    assert np.array_equal(pixels[m == 255], np.asarray(image)[m == 255])


def test_on_color_blends_soft_edges():
    image = Image.new("RGB", (8, 4), (200, 100, 0))
    out = arr(on_color(image, soft_mask(), (0, 0, 255)))
    assert tuple(out[0, 3]) == (100, 50, 127)  # 128/255 of the image, rounded
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[0, 7]) == (200, 100, 0)


@pytest.mark.parametrize("rgb", [(0, 0, 256), (-1, 0, 0), (0, 0)])
def test_on_color_refuses_bad_colours(scene, rgb):
    with pytest.raises(ValueError):
        on_color(*scene, rgb)


def banded(width: int, height: int, colors, axis: int) -> Image.Image:
    """Equal bands of ``colors`` across (axis 1) or down (axis 0)."""
    pixels = np.zeros((height, width, 3), np.uint8)
    n = len(colors)
    for i, color in enumerate(colors):
        if axis == 1:
            pixels[:, i * width // n:(i + 1) * width // n] = color
        else:
            pixels[i * height // n:(i + 1) * height // n, :] = color
    return Image.fromarray(pixels, "RGB")


GREEN, RED, BLUE = (0, 255, 0), (255, 0, 0), (0, 0, 255)


def test_cover_crops_the_sides_of_a_wide_background():
    """400x100 behind 200x100: scale 1, columns 100..300 kept (red | blue), the green sides cut."""
    out = arr(cover(banded(400, 100, [GREEN, RED, BLUE, GREEN], axis=1), (200, 100)))
    assert out.shape == (100, 200, 3)
    assert np.all(out[:, 3:97] == RED) and np.all(out[:, 103:197] == BLUE)
    assert not np.any(np.all(out == GREEN, axis=-1))


def test_cover_scales_a_small_background_up_and_crops_top_and_bottom():
    """100x100 behind 200x100: scaled to 200x200, rows 50..150 kept (red | blue)."""
    out = arr(cover(banded(100, 100, [GREEN, RED, BLUE, GREEN], axis=0), (200, 100)))
    assert out.shape == (100, 200, 3)
    assert np.all(out[8:42] == RED) and np.all(out[58:92] == BLUE)  # away from the resampled edges


def test_on_image_puts_the_subject_on_the_covered_background(scene):
    image, mask = scene
    background = banded(SIZE[0] * 3, SIZE[1], [GREEN, RED, GREEN], axis=1)  # covers to plain red
    out = on_image(image, mask, background)
    assert out.mode == "RGB" and out.size == SIZE
    pixels, m = np.asarray(out), np.asarray(mask)
    assert np.all(pixels[m == 0] == RED)
    assert np.array_equal(pixels[m == 255], np.asarray(image)[m == 255])


def test_blur_changes_only_the_background(scene):
    image, mask = scene
    out = blurred(image, mask)
    pixels, original, m = arr(out), arr(image), np.asarray(mask)
    assert out.mode == "RGB" and out.size == SIZE
    assert np.array_equal(pixels[m == 255], original[m == 255])  # the subject stays sharp
    far = np.asarray(mask.filter(ImageFilter.MaxFilter(15))) == 0
    assert np.abs(pixels[far] - original[far]).mean() > 5  # the checkered background is blurred
    # the 40/80 checker of the red channel is smoothed out
    assert pixels[far][:, 0].std() < original[far][:, 0].std() / 2


def test_blur_has_no_halo_of_the_subject(scene):
    """Right outside the subject, the blurred background keeps the background's colours."""
    image, mask = scene
    ring = (np.asarray(mask.filter(ImageFilter.MaxFilter(9))) == 255) & (np.asarray(mask) == 0)
    red = arr(blurred(image, mask))[..., 0]
    assert red[ring].max() <= 85  # background red is 40..80; the subject's is 220..255
    naive = arr(image.filter(ImageFilter.GaussianBlur(blur_radius(SIZE))))[..., 0]
    assert naive[ring].max() > 120  # what a plain blur would have shown


def test_blur_radius_is_proportional_to_the_image():
    assert blur_radius((1000, 500)) == pytest.approx(20.0)
    assert blur_radius((500, 1500)) == pytest.approx(30.0)
    assert blur_radius((20, 20)) == 2.0
    with pytest.raises(ValueError):
        blurred(Image.new("RGB", (8, 8)), Image.new("L", (8, 8)), radius=0)


def test_keep_subject_is_exact_inside_the_mask(scene):
    image, mask = scene
    generated = Image.new("RGB", SIZE, (9, 99, 199))
    out = keep_subject(image, generated, mask)
    pixels, m = np.asarray(out), np.asarray(mask)
    assert out.mode == "RGB"
    assert np.array_equal(pixels[m == 255], np.asarray(image)[m == 255])
    assert np.all(pixels[m == 0] == (9, 99, 199))


def test_keep_subject_blends_soft_edges_and_checks_sizes():
    original = Image.new("RGB", (8, 4), (255, 255, 255))
    out = arr(keep_subject(original, Image.new("RGB", (8, 4), (0, 0, 0)), soft_mask()))
    assert tuple(out[0, 3]) == (128, 128, 128) and tuple(out[0, 7]) == (255, 255, 255)
    with pytest.raises(ValueError, match="size"):
        keep_subject(original, Image.new("RGB", (8, 5)), soft_mask())


@pytest.mark.parametrize(("text", "rgb"), [
    ("#00ff00", (0, 255, 0)), ("#ABCDEF", (171, 205, 239)), ("#abc", (170, 187, 204)), (" #000 ", (0, 0, 0)),
])
def test_parse_hex_color(text, rgb):
    assert parse_hex_color(text) == rgb


@pytest.mark.parametrize("text", ["00ff00", "#12345", "#1234567", "#gggggg", "", "#", "red", None, 255, "#fff\n#000"])
def test_parse_hex_color_refuses_bad_values(text):
    with pytest.raises(InvalidJobError) as info:
        parse_hex_color(text)
    assert info.value.field == "bg_color"
    assert "#RRGGBB" in info.value.public


def test_parse_hex_color_names_the_field_it_is_given():
    with pytest.raises(InvalidJobError) as info:
        parse_hex_color("#xyz", field="color")
    assert info.value.field == "color"
