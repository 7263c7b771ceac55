"""The embedding deployment: the tiny model through the real loader, Serve's dynamic batching, bounds."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deployments.errors import InvalidJobError
from deployments.families.embedding import MAX_TEXTS, EmbeddingFamily
from deployments.pipelines.tiny_embedder import HIDDEN_SIZE, make_tiny_embedder


def allow_batching_outside_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray 2.60's batch queue asks the replica context for ``max_ongoing_requests`` (to warn);
    outside a replica that call raises. Only this warning is switched off here."""
    from ray.serve.batching import _BatchQueue

    monkeypatch.setattr(_BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_embedder(tmp_path_factory.mktemp("embedder") / "tiny-minilm")


@pytest.fixture(autouse=True)
def _batching(monkeypatch) -> None:
    allow_batching_outside_serve(monkeypatch)


class EncodeSpy:
    """Counts the model's encode calls and their sizes."""

    def __init__(self, family: EmbeddingFamily):
        self.sizes: list[int] = []
        self._encode = family.model.encode

        def encode(texts, *args, **kwargs):
            self.sizes.append(len(texts))
            return self._encode(texts, *args, **kwargs)

        family.model.encode = encode  # type: ignore[method-assign, assignment]


@pytest.fixture
def family(tiny_dir) -> Iterator[EmbeddingFamily]:
    yield EmbeddingFamily(str(tiny_dir), family="minilm", gpu="a10g", device="cpu", max_batch_size=8,
                          batch_wait_timeout_s=0.2)


def test_loads_through_the_standard_loader(family):
    assert family.dimension() == HIDDEN_SIZE
    info = family.info()
    assert info["kind"] == "embedding" and info["dimension"] == HIDDEN_SIZE and info["max_batch_size"] == 8
    asyncio.run(family.check_health())


def test_vectors_are_normalised_deterministic_and_distinct(family, tiny_dir):
    texts = ["The cat sat on the mat.", "Quarterly revenue grew 12%.", "The cat sat on the mat."]
    vectors = asyncio.run(family.embed(texts))
    assert len(vectors) == 3 and all(len(v) == HIDDEN_SIZE for v in vectors)
    assert all(isinstance(x, float) for x in vectors[0])
    for vector in vectors:
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)
    again = EmbeddingFamily(str(tiny_dir), device="cpu")  # a second replica: the same vectors
    assert np.allclose(asyncio.run(again.embed(texts[:1]))[0], vectors[0], atol=1e-6)


def test_the_tiny_maker_is_deterministic(tiny_dir, tmp_path):
    other = make_tiny_embedder(tmp_path / "again")
    assert (other / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


def test_concurrent_calls_are_encoded_together(family):
    spy = EncodeSpy(family)

    async def two_requests():
        return await asyncio.gather(family.embed(["first request"]), family.embed(["second request"]))

    first, second = asyncio.run(two_requests())
    assert spy.sizes == [2]  # ONE encode call for both requests
    assert np.allclose(first[0], asyncio.run(family.embed(["first request"]))[0], atol=1e-5)
    assert np.allclose(second[0], asyncio.run(family.embed(["second request"]))[0], atol=1e-5)


def test_a_full_batch_does_not_wait(tiny_dir):
    family = EmbeddingFamily(str(tiny_dir), device="cpu", max_batch_size=2, batch_wait_timeout_s=30)
    spy = EncodeSpy(family)

    async def two_requests():
        return await asyncio.gather(family.embed(["a"]), family.embed(["b"]))

    start = time.monotonic()
    asyncio.run(two_requests())
    assert time.monotonic() - start < 10  # the batch was full: no 30 s wait
    assert spy.sizes == [2]


def test_a_big_call_is_split_in_batches_in_order(family):
    spy = EncodeSpy(family)
    texts = [f"text number {i}" for i in range(20)]
    vectors = asyncio.run(family.embed(texts))
    assert sum(spy.sizes) == 20 and max(spy.sizes) <= 8
    singles = [asyncio.run(family.embed([t]))[0] for t in (texts[0], texts[13], texts[19])]
    for index, single in zip((0, 13, 19), singles, strict=True):
        assert np.allclose(vectors[index], single, atol=1e-5)


def test_inputs_are_bounded(family):
    for bad in ([], [1], "not a list", ["x"] * (MAX_TEXTS + 1), ["y" * 8001]):
        with pytest.raises(InvalidJobError) as caught:
            asyncio.run(family.embed(bad))  # type: ignore[arg-type]
        assert caught.value.field == "texts"


def test_health_fails_on_a_hung_encode(family):
    family._busy_since = time.monotonic() - family.stall_seconds - 1
    with pytest.raises(RuntimeError):
        asyncio.run(family.check_health())
    family._busy_since = None
    asyncio.run(family.check_health())
