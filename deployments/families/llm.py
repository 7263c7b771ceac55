"""The chat API's ``Local`` provider: a transformers causal LM as a Serve deployment, streamed.

``model_source`` is a directory (or a hub id, read offline) holding what
``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` read: e.g. a mounted
Qwen2.5-0.5B-Instruct or Llama instruct directory, or the tiny model of
``deployments.pipelines.tiny_llm``. The tokenizer must carry a chat template.

:meth:`LocalLLMFamily.generate` is an async generator: the chat service calls it with
``handle.options(stream=True).generate.remote(call)`` and gets :class:`TextDelta` events as
tokens come, then exactly one :class:`Usage`. The model runs in a worker thread; its tokens
reach the event loop through a queue, so waiting never blocks the loop. One generation runs
at a time per replica (later calls wait on an asyncio lock, without a thread). When the caller
goes away (the generator is closed or its task cancelled, as Serve does when the client
disconnects), the worker stops after the token under way and the model is free again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

from deployments.chat.messages import ProviderCall, TextDelta, Usage
from deployments.errors import InvalidJobError, ModelError, new_incident
from deployments.families.base import STALL_SECONDS, StepClock, short_error

logger = logging.getLogger("deployments.families.llm")

MAX_NEW_TOKENS = 1024
MAX_TEMPERATURE = 2.0
CHARS_PER_TOKEN = 32  # a conversation longer than this many characters per allowed token is refused untokenized
_DONE = object()  # the worker's last word on a generation's queue


class IncrementalDecoder:
    """Token ids in, text deltas out: each delta is what the ids decoded so far add to the text.

    Holds text back while it ends in an incomplete UTF-8 sequence (a byte-level token may carry
    half a character). Decodes a short window (from the last emitted token on), not the whole
    reply each time; the deltas concatenate to the decode of all ids."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # window start: the token before the text not yet emitted
        self.read = 0  # tokens up to here are emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.decode(self.ids[self.prefix:self.read])
        after = self.decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]

    def flush(self) -> str:
        """What is still held back (an incomplete sequence at the very end), as decoded."""
        before = self.decode(self.ids[self.prefix:self.read])
        after = self.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""


class Generation:
    """One call's state, shared by the worker thread and the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stop = threading.Event()  # set by the event loop: the caller went away
        self.finished = asyncio.Event()  # set from the worker when it has left the model
        self.tokens: list[int] = []
        self.error: BaseException | None = None

    def send(self, item: Any) -> None:
        """Hand ``item`` to the event loop (from the worker); if the loop is gone, stop."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody listens any more
            self.stop.set()

    def done(self) -> None:
        self.send(_DONE)
        try:
            self.loop.call_soon_threadsafe(self.finished.set)
        except RuntimeError:
            pass


def _streamer(generation: Generation, decoder: IncrementalDecoder, clock: StepClock):
    """A transformers streamer: skips the prompt, counts each new token, sends text deltas."""
    from transformers.generation.streamers import BaseStreamer

    class _Streamer(BaseStreamer):
        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value: Any) -> None:
            if not self.prompt_seen:  # generate() first puts the prompt
                self.prompt_seen = True
                return
            for token in value.reshape(-1).tolist():
                clock.step()
                generation.tokens.append(int(token))
                text = decoder.push(int(token))
                if text:
                    generation.send(text)

        def end(self) -> None:
            text = decoder.flush()
            if text:
                generation.send(text)

    return _Streamer()


def _stop_criteria(stop: threading.Event):
    """A stopping criterion that ends generation after the token under way once ``stop`` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool,  # type: ignore[return-value]
                              device=input_ids.device)

    return StoppingCriteriaList([_StopOnEvent()])


def context_length(config: Any, tokenizer: Any) -> int | None:
    """The model's context length: its config's position limit, else the tokenizer's (None: unknown)."""
    for cfg in (config, getattr(config, "text_config", None)):
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, name, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None


def model_error(exc: BaseException, what: str = "generation") -> ModelError:
    """Log a failure of the model under a new incident id; the error carries only the id to clients."""
    incident = new_incident()
    logger.error("%s failed (incident %s)", what, incident, exc_info=exc, extra={"kind": "llm", "incident": incident})
    return ModelError(short_error(exc), incident)


class LocalLLMFamily:
    """Serve deployment of one local chat model (a transformers causal LM with a chat template).

    Plain class: ``ingress.wiring.builder`` applies ``serve.deployment``. ``max_side`` is accepted
    because the builder passes it to every kind, and ignored. ``dtype``: ``auto`` is the
    checkpoint's own dtype on CUDA and float32 on a CPU, else a name (``float16``, ``bfloat16``,
    ``float32``). ``max_input_tokens`` defaults to the context length minus ``max_new_tokens``.
    """

    kind = "llm"

    def __init__(
        self,
        model_source: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        family: str = "",
        gpu: str = "",
        max_side: int = 0,
        stall_seconds: float = STALL_SECONDS,
        max_new_tokens: int = MAX_NEW_TOKENS,
        max_input_tokens: int | None = None,
        device: str = "auto",
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from deployments.loader import resolve_device, resolve_dtype
        from deployments.replica import prepare_replica

        prepare_replica()
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        self.model_source = model_source
        self.family = family
        self.gpu = gpu
        self.stall_seconds = stall_seconds
        self.max_new_tokens = max_new_tokens
        self.device = resolve_device(device)
        torch_dtype: Any = "auto" if dtype == "auto" and self.device.startswith("cuda") else resolve_dtype(dtype, self.device)
        start = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(model_source, revision=revision, local_files_only=True)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("the model's tokenizer has no chat template (a base model, not a chat/instruct one)")
        model: Any = AutoModelForCausalLM.from_pretrained(model_source, revision=revision, dtype=torch_dtype, local_files_only=True)
        self.model = model.to(self.device).eval()
        known = context_length(self.model.config, self.tokenizer)
        if max_input_tokens is None:
            if known is None:
                raise ValueError("the model's context length is unknown: set max_input_tokens")
            max_input_tokens = known - max_new_tokens
        if max_input_tokens < 1 or (known is not None and max_input_tokens + max_new_tokens > known):
            raise ValueError(f"max_input_tokens ({max_input_tokens}) + max_new_tokens ({max_new_tokens}) must fit the "
                             f"model's context of {known} tokens")
        self.max_input_tokens = max_input_tokens
        self.context_length = known if known is not None else max_input_tokens + max_new_tokens
        self.clock = StepClock()
        self._lock = asyncio.Lock()  # one generation at a time on the event loop (waiting costs no thread)
        self._model_lock = threading.Lock()  # and in threads: a stopping worker may still be finishing a token
        self._tokenizer_lock = threading.Lock()  # the prompt's encoding and the worker's decoding share it
        load_seconds = time.perf_counter() - start
        logger.info(
            "model loaded family=%s gpu=%s model=%s kind=llm device=%s dtype=%s context=%d load_seconds=%.2f",
            family, gpu, self.model_name, self.device, self.model.dtype, self.context_length, load_seconds,
            extra={"family": family, "gpu": gpu, "model": self.model_name, "kind": self.kind, "device": self.device,
                   "context_length": self.context_length, "load_seconds": round(load_seconds, 3)},
        )

    @property
    def model_name(self) -> str:
        """The model's name: the last part of its source, without the directories."""
        return Path(str(self.model_source).rstrip("/")).name

    # -- checks -------------------------------------------------------------
    def new_token_budget(self, call: ProviderCall) -> int:
        """How many tokens the call may generate: its ``max_tokens``, within this replica's limit."""
        if isinstance(call.max_tokens, bool) or not isinstance(call.max_tokens, int) or not \
                1 <= call.max_tokens <= self.max_new_tokens:  # more is a 422, never silently cut
            raise InvalidJobError("max_tokens", f"allowed: 1..{self.max_new_tokens} on the local model")
        return call.max_tokens

    def check_temperature(self, call: ProviderCall) -> float:
        value = call.temperature
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not 0 <= value <= MAX_TEMPERATURE:
            raise InvalidJobError("temperature", f"allowed: 0..{MAX_TEMPERATURE:g}")
        return float(value)

    def prompt_ids(self, call: ProviderCall) -> list[int]:
        """The conversation through the chat template, as token ids; refused when it is not one
        this model can read (images) or longer than ``max_input_tokens``. Blocking (tokenizes)."""
        if not call.turns:
            raise InvalidJobError("history", "the conversation needs at least one user turn")
        if any(turn.images for turn in call.turns):
            raise InvalidJobError("image_analyze", "the local model reads text only; send the turns without images")
        chars = len(call.system or "") + sum(len(turn.text) for turn in call.turns)
        if chars > self.max_input_tokens * CHARS_PER_TOKEN:
            raise InvalidJobError("history", f"the conversation is {chars} characters, allowed up to about "
                                             f"{self.max_input_tokens * CHARS_PER_TOKEN}")
        messages = [{"role": turn.role, "content": turn.text} for turn in call.turns]
        ids = self._template(messages, call.system or None)
        if len(ids) > self.max_input_tokens:
            raise InvalidJobError("history", f"the conversation (with the system message) is {len(ids)} tokens, "
                                             f"allowed up to {self.max_input_tokens}")
        return ids

    def _template(self, messages: list[dict[str, str]], system: str | None) -> list[int]:
        """``apply_chat_template``; a template that takes no system role gets the system text at the
        head of the first user turn. Control tokens typed into the text stay plain text."""
        from jinja2 import TemplateError

        def render(conversation: list[dict[str, str]]) -> list[int]:
            with self._tokenizer_lock:
                encoded: Any = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                                             sanitize_control_tokens=True)
            ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
            return [int(i) for i in ids]

        try:
            if system:
                try:
                    return render([{"role": "system", "content": system}, *messages])
                except TemplateError:
                    first = {"role": "user", "content": f"{system}\n\n{messages[0]['content']}"}
                    return render([first, *messages[1:]])
            return render(messages)
        except TemplateError as exc:
            raise InvalidJobError("history", f"the local model's chat template refused the conversation: {exc}") from None

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    # -- generation -----------------------------------------------------------
    def _work(self, generation: Generation, prompt: list[int], new_tokens: int, temperature: float) -> None:
        """The worker thread: run ``model.generate`` with the streamer; always ends with ``done()``."""
        import torch

        try:
            with self._model_lock:
                self.clock.begin()
                try:
                    input_ids = torch.tensor([prompt], dtype=torch.long, device=self.model.device)
                    options: dict[str, Any] = {"do_sample": True, "temperature": temperature} if temperature > 0 \
                        else {"do_sample": False}
                    if self.model.generation_config.pad_token_id is None:  # as generate() would, without its warning
                        options["pad_token_id"] = self._eos_id()
                    with torch.inference_mode():
                        self.model.generate(
                            input_ids=input_ids,
                            attention_mask=torch.ones_like(input_ids),
                            max_new_tokens=new_tokens,
                            streamer=_streamer(generation, IncrementalDecoder(self._decode), self.clock),
                            stopping_criteria=_stop_criteria(generation.stop),
                            **options,
                        )
                finally:
                    self.clock.end()
        except BaseException as exc:  # reported on the event loop, as a ModelError
            generation.error = exc
        finally:
            generation.done()

    def _eos_id(self) -> int | None:
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        return eos[0] if isinstance(eos, list) else eos

    async def _stream(self, call: ProviderCall, tokens: list[int] | None = None) -> AsyncGenerator[TextDelta | Usage, None]:
        """The events of one call; ``tokens`` (if given) receives the generated token ids."""
        new_tokens = self.new_token_budget(call)
        temperature = self.check_temperature(call)
        try:
            prompt = await asyncio.to_thread(self.prompt_ids, call)
        except InvalidJobError:
            raise
        except Exception as exc:  # the tokenizer or its template failed on a valid conversation
            raise model_error(exc, "prompt") from exc
        async with self._lock:
            start = time.perf_counter()
            generation = Generation(asyncio.get_running_loop())
            worker = threading.Thread(target=self._work, args=(generation, prompt, new_tokens, temperature),
                                      name="llm-generate", daemon=True)
            worker.start()
            finished = False
            try:
                while (item := await generation.queue.get()) is not _DONE:
                    yield TextDelta(item)
                if generation.error is not None:
                    raise model_error(generation.error) from generation.error
                finished = True
                if tokens is not None:
                    tokens.extend(generation.tokens)
                yield Usage(prompt_tokens=len(prompt), completion_tokens=len(generation.tokens))
            finally:
                generation.stop.set()
                await generation.finished.wait()  # the worker stops after the token under way
                seconds = time.perf_counter() - start
                logger.debug(
                    "generation %s prompt_tokens=%d completion_tokens=%d seconds=%.3f",
                    "done" if finished else "stopped", len(prompt), len(generation.tokens), seconds,
                    extra={"kind": self.kind, "model": self.model_name, "prompt_tokens": len(prompt),
                           "completion_tokens": len(generation.tokens), "stopped": not finished,
                           "seconds": round(seconds, 4)},
                )

    async def generate(self, call: ProviderCall) -> AsyncGenerator[TextDelta | Usage, None]:
        """Stream the reply to ``call``: :class:`TextDelta` events as tokens come, then one :class:`Usage`.

        ``temperature`` 0 decodes greedily, above 0 samples at that temperature; ``max_tokens`` caps
        the new tokens (at most ``max_new_tokens``). Refused with ``InvalidJobError``: images
        (``image_analyze``), a conversation longer than ``max_input_tokens`` (``history``)."""
        async with aclosing(self._stream(call)) as events:  # closing this generator closes the stream now
            async for event in events:
                yield event

    async def complete(self, call: ProviderCall) -> tuple[str, Usage]:
        """The whole reply to ``call`` at once (e.g. prompt enhancement), and its usage."""
        tokens: list[int] = []
        usage: Usage | None = None
        async with aclosing(self._stream(call, tokens)) as events:
            async for event in events:
                if isinstance(event, Usage):
                    usage = event
        assert usage is not None  # a stream that ends without an error ends with its usage
        return await asyncio.to_thread(self._decode, tokens), usage

    # -- Serve --------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Facts about this replica's model (plain JSON)."""
        return {"family": self.family, "gpu": self.gpu, "kind": self.kind, "model": self.model_name,
                "context_length": self.context_length, "max_input_tokens": self.max_input_tokens,
                "max_new_tokens": self.max_new_tokens, "device": self.device}

    async def check_health(self) -> None:
        """Liveness for Serve: the model is loaded and a generation under way is making tokens
        (one hung inside a step holds the model for good; failing makes Serve replace the replica)."""
        if getattr(self, "model", None) is None:
            raise RuntimeError("llm model is not loaded")
        stalled = self.clock.stalled_for()
        if stalled > self.stall_seconds:
            raise RuntimeError(f"the generation under way has made no token for {stalled:.0f} s")
