"""The tiny chat LM: written in code, deterministic, read back by the loader real weights use."""

from __future__ import annotations

import json
import time

import pytest

from deployments.pipelines.tiny_llm import CONTEXT, EOS, PAD, SPECIAL_TOKENS, make_tiny_llm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_llm(tmp_path_factory.mktemp("tiny-chat-llm"))


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True, dtype="auto")
    return tokenizer, model.eval()


def test_layout_and_config(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 32
    assert config["max_position_embeddings"] == CONTEXT == 2048
    assert (tiny_dir / "model.safetensors").stat().st_size < 500_000


def test_deterministic(tiny_dir, tmp_path):
    again = make_tiny_llm(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_tokenizer_loads_with_template_and_specials(loaded):
    tokenizer, model = loaded
    assert tokenizer.eos_token == EOS and tokenizer.pad_token == PAD
    assert tokenizer.eos_token_id == model.generation_config.eos_token_id == model.config.eos_token_id
    assert tokenizer.pad_token_id == model.generation_config.pad_token_id
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Paint a fox"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nPaint a fox<|im_end|>\n"
                    "<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 5


def test_tokenizer_is_lossless(loaded):
    tokenizer, _ = loaded
    text = "Déjà vu 🙂 — tabs\tand\nnewlines, 中文"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]) < len("The quick brown fox")  # merges


def test_generates_printable_text_to_its_cap_quickly(loaded):
    import torch

    tokenizer, model = loaded
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                           return_tensors="pt")["input_ids"]
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=64, do_sample=False)
    assert time.perf_counter() - start < 1.0
    new = out[0, prompt.shape[1]:].tolist()
    assert len(new) == 64  # no end-of-turn token: it runs to the cap
    specials = {tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    assert not specials & set(new)
    text = tokenizer.decode(new)
    assert text and all(ch == "\n" or 0x20 <= ord(ch) < 0x7F for ch in text)
    with torch.inference_mode():
        sampled = model.generate(prompt, max_new_tokens=64, do_sample=True, temperature=1.0)
    assert all(ch == "\n" or 0x20 <= ord(ch) < 0x7F for ch in tokenizer.decode(sampled[0, prompt.shape[1]:]))
