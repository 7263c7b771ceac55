"""Weighted prompts, AUTOMATIC1111 syntax, encoded with compel.

Syntax (as in the A1111 web UI; weights multiply when nested):

* ``(word:1.3)`` — weight 1.3; ``(word)`` — ×1.1; ``[word]`` — ÷1.1
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` — literal characters
* an unclosed ``(`` / ``[`` applies to the rest of the prompt; a stray ``)`` / ``]``
  is literal text (A1111 does the same). ``BREAK`` is plain text here.

compel 2.5.1's own parser speaks a different language (``(word)1.3``,
``word++``), so :func:`parse_weights` does the parsing and compel's
``EmbeddingsProvider`` does the weighting: weights > 1 scale a token's
embedding away from the empty prompt's, weights < 1 lerp towards the prompt with
that fragment masked out. Prompts longer than 77 tokens are encoded in 77-token
chunks (the plain diffusers path truncates them); positive and negative are padded
to the same length with empty-prompt chunks.

With every weight 1 the result equals diffusers' own ``encode_prompt``
(tested), and that includes ``clip_skip``, supported with exactly diffusers 0.42's
meaning: SD uses layer ``-(clip_skip+1)`` through the final layer norm, SDXL layer
``-(clip_skip+2)`` not normalised, the SDXL pooled embedding always comes from the
last layer, and — as in diffusers — the *negative* prompt is encoded without
clip_skip. compel only knows "penultimate", so the encoder it sees for the
positive prompt is wrapped to stop ``clip_skip`` layers early
(:class:`_SkipLayers`). Pooled SDXL embeddings come from the prompt with the
syntax removed (compel would feed the raw ``(word:1.3)`` text to the pooler).

Not handled here: textual-inversion multi-vector tokens and a text-encoder LoRA
``lora_scale`` (the pipeline applies that scale only while it encodes itself).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch

from deployments.errors import InvalidJobError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]            # escaped bracket or backslash
  | \\                      # lone backslash
  | \(                      # open round
  | \[                      # open square
  | :\s*([+-]?[.\d]+)\s*\)  # ':1.3)' closes a round bracket with a weight
  | \)                      # close round
  | \]                      # close square
  | [^\\()\[\]:]+           # plain text
  | :                       # a colon that closes nothing
    """,
    re.VERBOSE,
)


def parse_weights(prompt: str, field: str = "prompt") -> list[tuple[str, float]]:
    """Split ``prompt`` into ``[(text, weight), ...]`` (adjacent equal weights merged)."""
    parts: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in _TOKEN.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\"):
            parts.append([text[1:] or "\\", 1.0])
        elif text == "(":
            rounds.append(len(parts))
        elif text == "[":
            squares.append(len(parts))
        elif weight is not None and rounds:
            try:
                value = float(weight)
            except ValueError:
                raise InvalidJobError(field, f"bad weight {weight!r} in {text!r}") from None
            if not math.isfinite(value) or value < 0:
                raise InvalidJobError(field, f"weights must be finite and >= 0 (got {weight})")
            scale(rounds.pop(), value)
        elif text == ")" and rounds:
            scale(rounds.pop(), ROUND_MULTIPLIER)
        elif text == "]" and squares:
            scale(squares.pop(), SQUARE_MULTIPLIER)
        else:
            parts.append([text, 1.0])
    for start in rounds:
        scale(start, ROUND_MULTIPLIER)
    for start in squares:
        scale(start, SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for text, weight in parts:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]


def has_weights(prompt: str | None) -> bool:
    """True if ``prompt`` uses the syntax (so it must take the weighted path)."""
    if not prompt:
        return False
    parsed = parse_weights(prompt)
    return len(parsed) != 1 or parsed[0] != (prompt, 1.0)


class _SkipLayers(torch.nn.Module):
    """A CLIP text encoder seen ``skip`` layers shorter, the way compel reads it.

    ``hidden_states`` loses its last ``skip`` entries (so compel's "penultimate"
    is diffusers' ``-(skip+2)``) and ``last_hidden_state`` becomes the new last
    one through ``final_layer_norm`` (diffusers' SD clip_skip). Everything else,
    e.g. SDXL's ``text_embeds``, is the full encoder's.
    """

    def __init__(self, encoder: PreTrainedModel, skip: int):
        super().__init__()
        self.encoder = encoder
        self.skip = skip
        inner = getattr(encoder, "text_model", encoder)  # WithProjection keeps .text_model
        self.final_layer_norm = inner.final_layer_norm

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, return_dict=True):
        out = self.encoder(input_ids, attention_mask, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[: len(out.hidden_states) - self.skip]
        out["hidden_states"] = hidden
        out["last_hidden_state"] = self.final_layer_norm(hidden[-1])
        return out


def _provider(tokenizer, encoder, kind: str, clip_skip: int | None):
    from compel import DownweightMode, EmbeddingsProvider, ReturnedEmbeddingsType

    if clip_skip:
        layers = encoder.config.num_hidden_layers
        if not 0 < clip_skip < layers:
            raise InvalidJobError("clip_skip", f"allowed: 1..{layers - 1} for this text encoder")
        encoder = _SkipLayers(encoder, clip_skip)
    returned = (
        ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
        if kind == "sdxl"
        else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
    )
    return EmbeddingsProvider(
        tokenizer=tokenizer,
        text_encoder=encoder,
        truncate=False,
        padding_attention_mask_value=1,
        downweight_mode=DownweightMode.MASK,
        returned_embeddings_type=returned,
    )


def _encode(provider, parsed: list[tuple[str, float]]) -> torch.Tensor:
    texts = [text for text, _ in parsed]
    weights = [weight for _, weight in parsed]
    return provider.get_embeddings_for_weighted_prompt_fragments(
        text_batch=[texts], fragment_weights_batch=[weights], device=provider.device
    )


def _pad(embeds: torch.Tensor, length: int, empty: torch.Tensor) -> torch.Tensor:
    while embeds.shape[1] < length:
        embeds = torch.cat([embeds, empty.to(embeds.dtype)], dim=1)
    return embeds


def _kind(pipe: Any) -> str:
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"


def encode_weighted(
    pipe: Any, prompt: str, negative_prompt: str | None = None, clip_skip: int | None = None
) -> dict[str, torch.Tensor]:
    """Pipeline kwargs (``prompt_embeds``, ``negative_prompt_embeds`` and, for SDXL,
    the pooled pair) that replace ``prompt``, ``negative_prompt`` and ``clip_skip``.

    Batch 1 each; the pipeline repeats them for ``num_images_per_prompt``. An SDXL
    pipeline with ``force_zeros_for_empty_prompt`` gets zeros for a ``None``
    negative prompt, as diffusers does.
    """
    kind = _kind(pipe)
    parsed = {"prompt": parse_weights(prompt, "prompt")}
    zero_negative = kind == "sdxl" and negative_prompt is None and pipe.config.force_zeros_for_empty_prompt
    if not zero_negative:
        parsed["negative_prompt"] = parse_weights(negative_prompt or "", "negative_prompt")
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    if kind == "sdxl":
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))

    with torch.no_grad():
        providers = {"prompt": [_provider(tok, enc, kind, clip_skip) for tok, enc in pairs]}
        if not zero_negative:  # diffusers encodes the negative prompt without clip_skip
            providers["negative_prompt"] = (
                [_provider(tok, enc, kind, None) for tok, enc in pairs] if clip_skip else providers["prompt"]
            )
        encoded = {name: [_encode(p, parsed[name]) for p in providers[name]] for name in parsed}
        length = max(e.shape[1] for per in encoded.values() for e in per)
        embeds = {
            name: torch.cat([_pad(e, length, p.empty_z) for p, e in zip(providers[name], encoded[name])], dim=-1)
            for name in parsed
        }
        out = {"prompt_embeds": embeds["prompt"]}
        out["negative_prompt_embeds"] = (
            torch.zeros_like(embeds["prompt"]) if zero_negative else embeds["negative_prompt"]
        )
        if kind == "sdxl":
            pooler = providers["prompt"][1]  # text_embeds are the full encoder's either way
            pooled = {
                name: pooler.get_pooled_embeddings(["".join(t for t, _ in parsed[name])], device=pooler.device)
                for name in parsed
            }
            out["pooled_prompt_embeds"] = pooled["prompt"]
            out["negative_pooled_prompt_embeds"] = (
                torch.zeros_like(pooled["prompt"]) if zero_negative else pooled["negative_prompt"]
            )
    return out
