"""The document tests' embedder: the tiny sentence-transformers family, called in process (one per module)."""

from __future__ import annotations

import pytest

from deployments.families.embedding import EmbeddingFamily
from deployments.pipelines.tiny_embedder import make_tiny_embedder
from tests.deployments.families.test_embedding import allow_batching_outside_serve


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> EmbeddingFamily:
    directory = make_tiny_embedder(tmp_path_factory.mktemp("embedder") / "tiny-minilm")
    return EmbeddingFamily(str(directory), device="cpu", max_batch_size=16, batch_wait_timeout_s=0.005)


@pytest.fixture(autouse=True)
def _batching(monkeypatch) -> None:
    allow_batching_outside_serve(monkeypatch)
