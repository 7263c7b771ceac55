"""The ``studio`` command-line client against the running service: the registry, an async
generation with a ControlNet app (progress, saved files), and a synchronous one."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from client.cli import main
from tests.e2e.conftest import KEY_A

pytestmark = pytest.mark.e2e


def test_cli_lists_apps(service, capsys):
    assert main(["--url", service.base, "--key", KEY_A, "apps"]) == 0
    out = capsys.readouterr().out
    assert "ap-1us0FK21Ach6eiWxo22is8" in out and "ap-sd15-variation" in out


def test_cli_generates_async_with_a_control_image_and_saves_it(service, tmp_path, capsys):
    image = Image.new("RGB", (512, 512), "white")
    ImageDraw.Draw(image).ellipse((128, 128, 384, 384), fill="black")
    path = tmp_path / "circle.png"
    image.save(path)
    code = main(["--url", service.base, "--key", KEY_A, "generate", "--app", "ap-1us0FK21Ach6eiWxo22is8",
                 "--image", str(path), "--prompt", "a moon", "--steps", "2", "--out", str(tmp_path / "out"),
                 "--option", "return_control_image=true"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = [line for line in captured.out.splitlines() if line.strip()]
    assert len(saved) == 2  # the image and the control image
    for line in saved:
        with Image.open(line) as img:
            assert img.size == (512, 512)
    assert KEY_A not in captured.out + captured.err


def test_cli_sync_and_a_validation_error(service, tmp_path, capsys):
    assert main(["--url", service.base, "--key", KEY_A, "generate", "--app", "ap-sd15-txt2img", "--sync",
                 "--steps", "1", "--width", "256", "--height", "256", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and Image.open(io.BytesIO(open(out[0], "rb").read())).size == (256, 256)
    assert main(["--url", service.base, "--key", KEY_A, "generate", "--app", "ap-sd15-txt2img", "--sync",
                 "--width", "100"]) == 2
    assert "width" in capsys.readouterr().err
