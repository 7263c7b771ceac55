"""Fixtures for the deployment tests: tiny random-weight models, built once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from deployments.tiny import make_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """``{"tiny-sd15": dir, "tiny-sdxl": dir}``, written once per test session."""
    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def sd_pipelines(tiny_models):
    from deployments.loader import load_pipeline

    return load_pipeline(str(tiny_models["tiny-sd15"]))


@pytest.fixture(scope="session")
def sdxl_pipelines(tiny_models):
    from deployments.loader import load_pipeline

    return load_pipeline(str(tiny_models["tiny-sdxl"]))


@pytest.fixture(scope="session")
def sd_model(sd_pipelines):
    from deployments.families.diffusion import DiffusionModel

    return DiffusionModel(sd_pipelines)


@pytest.fixture(scope="session")
def sdxl_model(sdxl_pipelines):
    from deployments.families.diffusion import DiffusionModel

    return DiffusionModel(sdxl_pipelines)


class MemoryStore:
    """A tiny in-memory ObjectStore for tests."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        with self._lock:
            self.objects[key] = (bytes(data), content_type)

    def get(self, key: str) -> bytes:
        from storage.base import ObjectNotFound

        try:
            return self.objects[key][0]
        except KeyError:
            raise ObjectNotFound(key) from None

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def url(self, key: str, expires_in: int) -> str:
        return f"memory://{key}?expires_in={expires_in}"


@pytest.fixture
def memory_store() -> MemoryStore:
    return MemoryStore()


_UPSTREAM_NOISE = (
    # diffusers 0.42 schedulers hand torch tensors to numpy 2: upstream deprecations, not ours.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    "ignore:__array_wrap__ must accept context:DeprecationWarning",
)


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            for spec in _UPSTREAM_NOISE:
                item.add_marker(pytest.mark.filterwarnings(spec))
