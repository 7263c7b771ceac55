"""Text embeddings (for the PDF vector store) as a deployment: a sentence-transformers model.

``model_source`` is a sentence-transformers model directory (or hub id on a machine with a
hub), loaded with ``SentenceTransformer(model_source, local_files_only=True)`` — e.g. a
local copy of ``sentence-transformers/all-MiniLM-L6-v2``; the tiny test model
(``deployments.pipelines.tiny_embedder``, maker ``tiny-minilm``) goes through the same loader.

:meth:`EmbeddingFamily.embed` uses Ray Serve's dynamic batching: each text is one call of a
``serve.batch``-wrapped encoder, so texts of concurrent requests (the document store's slices,
chat queries) are encoded together, up to ``max_batch_size`` texts or ``batch_wait_timeout_s``.
The batcher is made per instance and per event loop (``serve.batch`` keeps its queue on the
decorated function and binds it to the loop of its first call; a Serve replica has one
instance and one loop, a test process many). Batches run one at a time, in a worker thread.

Vectors are L2-normalised float lists (cosine similarity = dot product).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import Any

from deployments.errors import InvalidJobError, ModelError, new_incident
from deployments.families.base import short_error

logger = logging.getLogger(__name__)

MAX_TEXTS = 256  # per embed call


def pick_device(device: str) -> str:
    """``auto``: CUDA when this process sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class EmbeddingFamily:
    """Serve deployment of one sentence-embedding model (plain class; the builder binds it).

    ``revision`` is passed to the loader; ``dtype`` ``float16``/``bfloat16`` halves the model on
    a GPU (on the CPU it stays float32); ``max_side`` is accepted because the builder passes it
    to every kind, and ignored.
    """

    kind = "embedding"

    def __init__(
        self,
        model_source: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        family: str = "",
        gpu: str = "",
        max_side: int = 0,
        stall_seconds: float = 300.0,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.01,
        max_text_chars: int = 8000,
        device: str = "auto",
    ):
        from sentence_transformers import SentenceTransformer

        from deployments.replica import prepare_replica

        prepare_replica()
        if max_batch_size < 1 or batch_wait_timeout_s < 0 or max_text_chars < 1:
            raise ValueError("max_batch_size >= 1, batch_wait_timeout_s >= 0 and max_text_chars >= 1 are required")
        self.model_source = model_source
        self.family = family
        self.gpu = gpu
        self.stall_seconds = stall_seconds
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)
        self.max_text_chars = max_text_chars
        self.device = pick_device(device)
        start = time.perf_counter()
        self.model = SentenceTransformer(model_source, device=self.device, revision=revision, local_files_only=True)
        if dtype in ("float16", "bfloat16") and self.device != "cpu":
            import torch

            self.model.to(getattr(torch, dtype))
        self._dimension = int(self.model.get_embedding_dimension() or 0)
        self._encode_lock = threading.Lock()  # one encode at a time, even from a cancelled request's thread
        self._busy_since: float | None = None
        self._batcher: tuple[asyncio.AbstractEventLoop, Any] | None = None
        logger.info("embedding model loaded family=%s gpu=%s source=%s device=%s dimension=%d load_seconds=%.2f",
                    family, gpu, model_source, self.device, self._dimension, time.perf_counter() - start,
                    extra={"family": family, "gpu": gpu, "model_source": model_source, "kind": self.kind})

    # -- batching -------------------------------------------------------------
    def _batched(self):
        """This instance's ``serve.batch`` encoder for the running event loop."""
        from ray import serve

        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher[0] is not loop:
            encoder = serve.batch(max_batch_size=self.max_batch_size,
                                  batch_wait_timeout_s=self.batch_wait_timeout_s)(self._encode_batch)
            self._batcher = (loop, encoder)
        return self._batcher[1]

    async def _encode_batch(self, texts: list[str]) -> list[list[float]]:
        """One model call for the texts of concurrent requests (the ``serve.batch`` target)."""
        return await asyncio.to_thread(self._encode, list(texts))

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self._encode_lock:
            self._busy_since = time.monotonic()
            try:
                vectors = self.model.encode(texts, batch_size=max(1, len(texts)), convert_to_numpy=True,
                                            normalize_embeddings=True, show_progress_bar=False)
            finally:
                self._busy_since = None
        return [[float(x) for x in row] for row in vectors]

    # -- the API ----------------------------------------------------------------
    def check_texts(self, texts: Any) -> list[str]:
        """``texts`` as a list of 1..MAX_TEXTS strings of at most ``max_text_chars`` characters."""
        if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
            raise InvalidJobError("texts", "allowed: a list of strings")
        if not 1 <= len(texts) <= MAX_TEXTS:
            raise InvalidJobError("texts", f"got {len(texts)} texts; allowed: 1..{MAX_TEXTS} per call")
        for index, text in enumerate(texts):
            if len(text) > self.max_text_chars:
                raise InvalidJobError("texts", f"texts[{index}] has {len(text)} characters; allowed: at most "
                                               f"{self.max_text_chars}")
        return list(texts)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """One L2-normalised vector per text, in order."""
        checked = self.check_texts(texts)
        encoder = self._batched()
        try:
            vectors = await asyncio.gather(*(encoder(text) for text in checked))
        except InvalidJobError:
            raise
        except Exception as exc:
            incident = new_incident()
            logger.error("embedding failed (incident %s)", incident, exc_info=exc, extra={"incident": incident})
            raise ModelError(short_error(exc), incident) from exc
        for vector in vectors:
            if len(vector) != self._dimension or not all(math.isfinite(x) for x in vector):
                incident = new_incident()
                logger.error("embedding gave a bad vector (incident %s)", incident, extra={"incident": incident})
                raise ModelError("the model gave a vector of the wrong size or with non-finite values", incident)
        return list(vectors)

    def dimension(self) -> int:
        """The length of every vector :meth:`embed` returns."""
        return self._dimension

    def info(self) -> dict[str, Any]:
        """Facts about this replica's model (plain JSON)."""
        return {"family": self.family, "gpu": self.gpu, "kind": self.kind, "model_source": self.model_source,
                "dimension": self._dimension, "device": self.device, "max_batch_size": self.max_batch_size,
                "batch_wait_timeout_s": self.batch_wait_timeout_s, "max_texts": MAX_TEXTS,
                "max_text_chars": self.max_text_chars}

    async def check_health(self) -> None:
        """Serve's liveness check: the model is loaded and no encode has hung."""
        if getattr(self, "model", None) is None:
            raise RuntimeError("embedding model is not loaded")
        busy = self._busy_since
        if busy is not None and time.monotonic() - busy > self.stall_seconds:
            raise RuntimeError(f"an encode has run for {time.monotonic() - busy:.0f} s")
