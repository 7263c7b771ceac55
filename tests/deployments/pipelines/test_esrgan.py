"""ESRGAN upscalers through spandrel: the tiny weights file is detected, 2x/4x/8x are made by the
documented plan, tiling matches an untiled pass, and what cannot be served is refused."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployments.errors import InvalidJobError
from deployments.pipelines.esrgan import SCALES, Step, load_upscaler, plan_for, tile_spans
from deployments.pipelines.spandrel_compat import PLACEHOLDER_NAMES, import_spandrel, torchvision_importable
from deployments.pipelines.tiny_upscalers import ESRGAN_FILE, write_tiny_esrgan, write_tiny_esrgan_file


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("esrgan")
    four = write_tiny_esrgan(root / "4x")
    two = write_tiny_esrgan_file(root / "2x" / "2x-tiny.pth", scale=2)
    return {"dir4": four.parent, "file4": four, "file2": two}


@pytest.fixture(scope="module")
def up4(weights):
    return load_upscaler(str(weights["dir4"]))


@pytest.fixture(scope="module")
def up2(weights):
    return load_upscaler(str(weights["file2"]))


def noise_image(width: int = 37, height: int = 23, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- loading ------------------------------------------------------------------------------


def test_spandrel_detects_the_tiny_file_as_a_4x_esrgan(weights):
    descriptor = import_spandrel().ModelLoader().load_from_file(weights["file4"])
    assert weights["file4"].name == ESRGAN_FILE
    assert descriptor.architecture.id == "ESRGAN"
    assert (descriptor.scale, descriptor.purpose, descriptor.input_channels, descriptor.output_channels) == (4, "SR", 3, 3)


def test_load_from_a_directory_or_a_file(up4, up2, weights):
    assert (up4.native_scale, up4.architecture, up4.device) == (4, "ESRGAN", "cpu")
    assert up2.native_scale == 2
    assert load_upscaler(str(weights["file4"]), tile=64, overlap=8).native_scale == 4


def test_refuses_files_that_are_not_upscaler_weights(tmp_path):
    png = tmp_path / "picture.safetensors"
    noise_image().save(png, format="PNG")
    with pytest.raises(ValueError, match="could not be read"):
        load_upscaler(str(png))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="could not be read"):
        load_upscaler(str(garbage))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="must be"):
        load_upscaler(str(text))
    with pytest.raises(ValueError, match="not found"):
        load_upscaler(str(tmp_path / "missing.safetensors"))


def test_refuses_a_directory_without_exactly_one_weights_file(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_upscaler(str(tmp_path))
    write_tiny_esrgan_file(tmp_path / "a.safetensors")
    write_tiny_esrgan_file(tmp_path / "b.pth")
    with pytest.raises(ValueError, match="found 2"):
        load_upscaler(str(tmp_path))


def test_refuses_a_1x_model_and_an_unknown_state_dict(tmp_path):
    from safetensors.torch import save_file

    spandrel = import_spandrel()
    one_x = spandrel.ModelLoader().load_from_state_dict(_one_x_state_dict())
    assert (one_x.architecture.id, one_x.scale) == ("ESRGAN", 1)  # the file below really is a 1x ESRGAN
    save_file(_one_x_state_dict(), str(tmp_path / "1x.safetensors"))
    with pytest.raises(ValueError, match="not a super-resolution"):
        load_upscaler(str(tmp_path / "1x.safetensors"))
    import torch

    save_file({"encoder.weight": torch.zeros(3, 3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="spandrel knows"):
        load_upscaler(str(tmp_path / "other.safetensors"))


def _one_x_state_dict() -> dict:
    from deployments.pipelines.tiny_upscalers import esrgan_state_dict

    tensors = esrgan_state_dict(2)
    # Drop the one upsampling conv (model.3) and renumber HR/last convs: a 1x (restoration) ESRGAN.
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("model.3."):
            continue
        renamed[re.sub(r"^model\.(5|7)\.", lambda m: f"model.{int(m.group(1)) - 3}.", key)] = value
    return renamed


# -- plans --------------------------------------------------------------------------------


def test_plans_for_native_4x_and_2x(up4, up2):
    model4, model2, half = Step("pass", 4), Step("pass", 2), Step("downscale", 2)
    assert up4.plan(2) == [model4, half]
    assert up4.plan(4) == [model4]
    assert up4.plan(8) == [model4, half, model4]
    assert up2.plan(2) == [model2]
    assert up2.plan(4) == [model2, model2]
    assert up2.plan(8) == [model2, model2, model2]
    with pytest.raises(ValueError):
        plan_for(3, 4)


@pytest.mark.parametrize("scale", [0, 1, 3, 16])
def test_unsupported_scales_are_refused_naming_scale(up4, scale):
    with pytest.raises(InvalidJobError) as info:
        up4.upscale(noise_image(8, 8), scale)
    assert info.value.field == "scale"
    assert "2, 4, 8" in info.value.message


def test_tile_spans_cover_the_length_in_near_equal_pieces():
    assert tile_spans(10, 256) == [(0, 10)]
    spans = tile_spans(37, 8)
    assert spans[0][0] == 0 and spans[-1][1] == 37
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert {end - start for start, end in spans} <= {7, 8}


# -- upscaling ----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_output_is_exactly_scale_times_an_odd_sized_input(up4, up2, scale):
    image = noise_image()
    for up in (up4, up2):
        out = up.upscale(image, scale)
        assert out.mode == "RGB"
        assert out.size == (37 * scale, 23 * scale)
        assert pixels(out).std() > 5  # not a flat image


def test_2x_and_8x_from_a_4x_model_follow_the_plan(up4):
    image = noise_image()
    four = up4.upscale(image, 4)
    two = up4.upscale(image, 2)
    assert np.array_equal(pixels(two), pixels(four.resize((74, 46), Image.Resampling.LANCZOS)))
    eight = up4.upscale(image, 8)
    assert np.array_equal(pixels(eight), pixels(up4.upscale(two, 4)))  # the second pass sees the 2x pixels


def test_the_output_depends_on_the_input(up4):
    a, b = up4.upscale(noise_image(seed=1), 4), up4.upscale(noise_image(seed=2), 4)
    assert np.abs(pixels(a) - pixels(b)).mean() > 5


def test_tiled_equals_untiled_when_the_overlap_covers_the_receptive_field(weights, up4):
    image = noise_image()
    whole = pixels(up4.upscale(image, 4))  # one tile: 37x23 < 256
    tiled = load_upscaler(str(weights["file4"]), tile=8, overlap=12)
    assert tiled.count_tiles(37, 23, 4) == 5 * 3
    assert np.abs(pixels(tiled.upscale(image, 4)) - whole).max() <= 1
    seams = load_upscaler(str(weights["file4"]), tile=8, overlap=0)
    assert np.abs(pixels(seams.upscale(image, 4)) - whole).max() > 10  # the overlap is what makes them equal


def test_progress_counts_tiles_across_passes(weights):
    up = load_upscaler(str(weights["file4"]), tile=16, overlap=4)
    steps: list[tuple[int, int]] = []
    up.upscale(noise_image(), 8, on_step=lambda done, total: steps.append((done, total)))
    first = 3 * 2  # 37x23 in tiles of 16
    second = 5 * 3  # 74x46 after the Lanczos halving
    assert steps == [(i, first + second) for i in range(1, first + second + 1)]


def test_alpha_is_kept_and_resized(up4):
    image = noise_image().convert("RGBA")
    alpha = Image.linear_gradient("L").resize(image.size)
    image.putalpha(alpha)
    out = up4.upscale(image, 4)
    assert out.mode == "RGBA" and out.size == (148, 92)
    expected = alpha.resize((148, 92), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(expected))
    assert np.array_equal(pixels(out.convert("RGB")), pixels(up4.upscale(image.convert("RGB"), 4)))


# -- spandrel without torchvision ----------------------------------------------------------


def test_placeholder_names_are_exactly_what_spandrel_imports_from_torchvision():
    root = Path(import_spandrel().__file__).parent
    imported: set[str] = set()
    for source in root.rglob("*.py"):
        for names in re.findall(r"^from torchvision[\w.]* import (.+)$", source.read_text(), re.MULTILINE):
            imported |= {name.split(" as ")[0].strip() for name in names.split(",")}
    assert imported == set(PLACEHOLDER_NAMES)


@pytest.mark.skipif(torchvision_importable(), reason="torchvision imports here: spandrel uses the real one")
def test_placeholders_fail_loudly_when_called_and_leave_no_fake_torchvision():
    import sys

    from spandrel.architectures import RestoreFormer
    from spandrel.architectures.LaMa.__arch import LaMa

    with pytest.raises(ImportError, match="torchvision"):
        RestoreFormer.tv_normalize(None, [0.5], [0.5])
    with pytest.raises(ImportError, match="torchvision"):
        LaMa.rotate(None, 0)
    with pytest.raises(ImportError, match="torchvision"):
        _ = LaMa.InterpolationMode.BILINEAR
    assert "torchvision" not in sys.modules


def test_a_broken_torchvision_install_is_bypassed(tmp_path, weights):
    """As on the CPU test machines: a torchvision that fails half-way through its import
    (a CUDA-linked wheel beside CPU torch). spandrel still imports, nothing of torchvision
    stays in ``sys.modules``, and ESRGAN runs without touching it."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "extension.py").write_text("")
    (fake / "__init__.py").write_text(
        "from torchvision import extension\nraise RuntimeError('operator torchvision::nms does not exist')\n")
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from deployments.pipelines.spandrel_compat import import_spandrel\n"
        "from deployments.pipelines.esrgan import load_upscaler\n"
        "import_spandrel()\n"
        "assert not [n for n in sys.modules if n.split('.')[0] == 'torchvision'], 'torchvision left behind'\n"
        f"print(load_upscaler({str(weights['file4'])!r}).upscale(Image.new('RGB', (5, 3)), 4).size)\n"
    )
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(root)])}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(20, 12)"
