"""A tiny random-weight chat LM for the ``Local`` chat provider: tests and the embedded default only.

:func:`make_tiny_llm` writes the directory a real causal LM has (e.g. Qwen2.5-0.5B-Instruct), read
by ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` exactly as real weights are
(``deployments.families.llm``)::

    <out_dir>/config.json               LlamaForCausalLM: hidden 32, 2 layers, 4 heads (2 KV), context 2048
    <out_dir>/model.safetensors         random weights (torch seed 0: the same bytes on every run)
    <out_dir>/generation_config.json    eos/pad/bos ids and ``suppress_tokens`` (below)
    <out_dir>/tokenizer.json            byte-level BPE trained in memory on a fixed text
    <out_dir>/tokenizer_config.json     PreTrainedTokenizerFast, eos ``<|im_end|>``, pad ``<|endoftext|>``
    <out_dir>/chat_template.jinja       ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, system first

The tokenizer is lossless (all 256 bytes are in its vocabulary, so any text encodes). The model is
untrained: its output is RANDOM TEXT, never an answer. Its ``generation_config.json`` suppresses the
special tokens (the end-of-turn token included) and the bytes that are not printable ASCII, so every
generated token decodes to visible text and generation runs to its token cap: greedy decoding is
deterministic and a stream always has as many deltas as tokens. A whole call takes milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

NAME = "tiny-chat-llm"
CONTEXT = 2048
SEED = 0
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS, PAD = "<|im_end|>", "<|endoftext|>"
VOCAB_SIZE = 512  # 256 bytes + 3 specials + merges learned from TRAINING_TEXT (fewer if it runs out)

#: ChatML, as Qwen2 instruct models use it; a system message (if any) comes first.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TRAINING_TEXT = (
    "You are a helpful assistant. The studio makes pictures, speech and answers. "
    "Hello! How can I help you today? Please tell me more about the picture you want. "
    "A painting of a lighthouse on a rocky coast at sunset, with waves and gulls. "
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "What is the weather like in Paris in spring? It is mild, with rain and bright days. "
    "Write a short poem about the sea. The sea is wide and grey and calm at night. "
    "Thank you, that is all for now. Goodbye, and have a nice day."
)


def _tokenizer():
    """A ``PreTrainedTokenizerFast`` over a byte-level BPE trained on :data:`TRAINING_TEXT`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([TRAINING_TEXT] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=CONTEXT,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _suppressed(tokenizer) -> list[int]:
    """Token ids the tiny model never generates: the specials and every byte but printable ASCII and newline."""
    from tokenizers import pre_tokenizers

    allowed = {chr(b) for b in range(0x20, 0x7F)} | {"\n"}
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    # ByteLevel shows byte b as a printable stand-in character; map the stand-ins back to their bytes.
    stand_in = {_byte_char(b): b for b in range(256)}
    assert set(stand_in) == set(byte_chars)
    ids = [tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS]
    ids += [tokenizer.convert_tokens_to_ids(char) for char, byte in sorted(stand_in.items(), key=lambda kv: kv[1])
            if chr(byte) not in allowed]
    return sorted(ids)


def _byte_char(byte: int) -> str:
    """GPT-2's byte-to-unicode stand-in for one byte (what ByteLevel puts in the vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    if byte in printable:
        return chr(byte)
    return chr(256 + sum(1 for b in range(byte) if b not in printable))


def make_tiny_llm(out_dir: Path) -> Path:
    """Write the tiny chat LM (config, random weights, generation config, tokenizer with its chat
    template) into ``out_dir``; return ``out_dir``. Deterministic: the same files on every run."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        suppress_tokens=_suppressed(tokenizer),
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
