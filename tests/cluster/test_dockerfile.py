"""The worker image's Dockerfile (not built here): its base pinned by digest, uv checked by its hash
(never piped into a shell), torch pin, sources and user."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lines() -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _args(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        if m := re.fullmatch(r'ARG (\w+)=(?:"([^"]*)"|(\S+))', line):
            found[m[1]] = m[2] if m[2] is not None else m[3]
    return found


def test_base_is_a_cuda_runtime_image_pinned_by_a_required_digest(lines: list[str]) -> None:
    base = _args(lines)["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", base), base
    at = lines.index("FROM ${CUDA_IMAGE}@${CUDA_DIGEST} AS runtime")
    assert lines[at - 1] == "ARG CUDA_DIGEST"  # no default: a build without a digest fails
    assert lines[at - 2].startswith("ARG CUDA_IMAGE=")
    stages: set[str] = set()
    for line in (line for line in lines if line.startswith("FROM ")):
        image, _, stage = line.split()[1:4]
        assert image in stages or "@" in image, f"{line}: an external base must be pinned by digest"
        stages.add(stage)


def test_no_script_is_piped_into_a_shell_and_uv_is_checked(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert not re.search(r"\|\s*(env\s+\S+=\S+\s+)?(sh|bash|zsh|dash)\b", text), "a download piped into a shell"
    assert "curl" not in text
    args = _args(lines)
    assert re.fullmatch(r"[0-9a-f]{64}", args["UV_WHEEL_SHA256"])
    assert args["UV_WHEEL_URL"].startswith("https://files.pythonhosted.org/")
    assert f"uv-{args['UV_VERSION']}-" in args["UV_WHEEL_URL"]
    install = next(line for line in lines if "${UV_WHEEL_URL}" in line)
    download, check, unpack = (install.index(s) for s in ('"${UV_WHEEL_URL}"', "sha256sum --check", "unzip -j"))
    assert download < check < unpack < install.index("uv python install"), "uv runs only after its hash matched"


def test_python_and_torch_follow_pyproject(lines: list[str]) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch,) = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    args = _args(lines)
    assert args["TORCH_SPEC"] == torch
    assert args["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")
    assert args["PYTHON_VERSION"] == "3.11" and ">=3.11,<3.12" == project["requires-python"]
    torch_at = next(i for i, line in enumerate(lines) if '--index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"' in line)
    project_at = next(i for i, line in enumerate(lines) if 'uv pip install --no-cache ".[upscale]"' in line)
    assert torch_at < project_at, "torch must come from the CUDA index before the project pulls it from PyPI"
    # torchvision (spandrel's) from the same CUDA index as torch, never PyPI's build for another torch.
    assert lines[torch_at].endswith('"${TORCH_SPEC}" torchvision')
    # ONNX Runtime with its CUDA provider (insightface, background removal) in place of PyPI's CPU build.
    assert "uv pip uninstall onnxruntime" in lines[project_at] and "onnxruntime-gpu" in lines[project_at]


def test_copied_sources_exist_and_cover_the_packages(lines: list[str]) -> None:
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ") and "--from" not in line and "--chown" not in line]
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    copied = {s for sources in copies for s in sources}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= copied
    assert any(line == "WORKDIR /app" for line in lines)


def test_runs_as_the_pods_non_root_user_without_baked_weights(lines: list[str]) -> None:
    users = [line for line in lines if line.startswith("USER ")]
    assert users == ["USER 1000:1000"]
    assert lines[-1] == "FROM runtime AS serve", "the default (last) stage must not bake weights"
    stages = [line for line in lines if line.startswith("FROM ")]
    assert stages == ["FROM ${CUDA_IMAGE}@${CUDA_DIGEST} AS runtime", "FROM runtime AS with-weights",
                      "FROM runtime AS serve"]


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".models", ".data", "tests", "**/dev-api-keys.json"} <= ignored
