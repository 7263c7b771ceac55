"""What Serve's dynamic batching buys the document store's embedder: texts per second when
concurrent one-text calls are encoded together, against one encode call per text.

    python -m bench.embedding [--texts 256] [--concurrency 32] [--batch 32] [--words 120]

The model has all-MiniLM-L6-v2's shape (384 wide, 6 layers, 12 heads, 1536) with seeded random
weights, written as a sentence-transformers directory and loaded through ``EmbeddingFamily``
like real weights. Both runs go through ``EmbeddingFamily.embed`` — the method the document
store calls by handle — with ``@serve.batch`` on: the baseline with ``max_batch_size`` 1
(every text its own ``encode``), the batched run with ``--batch``. ``--concurrency`` callers
send one chunk-sized text (``--words`` words) each at a time, as concurrent ``pdfVectorStore``
and DBSearch requests do. Printed: texts/s of each, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path


def _allow_batching_outside_serve() -> None:
    """Ray 2.60's batch queue asks the replica context for a warning it prints; outside a
    replica that call raises. Only that warning is switched off."""
    from ray.serve.batching import _BatchQueue

    _BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None  # type: ignore[method-assign]


async def _run(family, texts: list[str], concurrency: int) -> float:
    queue = list(texts)

    async def caller() -> None:
        while queue:
            await family.embed([queue.pop()])

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return len(texts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.embedding", description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--words", type=int, default=120, help="words per text (a ~1000-character chunk: 160)")
    args = parser.parse_args(argv)

    from deployments.families.embedding import EmbeddingFamily
    from deployments.pipelines.tiny_embedder import make_tiny_embedder

    _allow_batching_outside_serve()
    words = "the lighthouse keeper logs tides every morning and bakery ovens glow at dawn".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(args.words)) for i in range(args.texts)]
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_embedder(Path(tmp) / "minilm-shaped", hidden_size=384, layers=6, heads=12,
                                  intermediate_size=1536)
        results = {}
        for name, batch in (("one text per encode", 1), (f"batched (max {args.batch})", args.batch)):
            family = EmbeddingFamily(str(path), max_batch_size=batch, batch_wait_timeout_s=0.005, device="cpu")

            async def measure(family=family) -> float:
                await family.embed(texts[:4])  # warm-up
                return await _run(family, texts, args.concurrency)

            results[name] = asyncio.run(measure())
    base = next(iter(results.values()))
    print(f"{args.texts} texts of {args.words} words, {args.concurrency} concurrent callers, 384x6 MiniLM-shaped model")
    print("| run | texts/s | vs one per encode |")
    print("|---|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |")
    print(json.dumps({k: round(v, 2) for k, v in results.items()}))


if __name__ == "__main__":
    main()
