"""A tiny random-weight sentence-transformers model, made in code (maker name ``tiny-minilm``).

:func:`make_tiny_embedder` writes the same layout a real sentence-transformers model has
(e.g. a local copy of ``sentence-transformers/all-MiniLM-L6-v2``), so
``SentenceTransformer(path, local_files_only=True)`` — the loader real weights go
through — reads it::

    <out_dir>/modules.json                       Transformer -> Pooling (mean) -> Normalize
    <out_dir>/config_sentence_transformers.json
    <out_dir>/sentence_bert_config.json          max_seq_length 128
    <out_dir>/config.json, model.safetensors     a BertModel: 2 layers, hidden size 32, 4 heads
    <out_dir>/tokenizer.json, tokenizer_config.json   a WordPiece fast BERT tokenizer, lower-casing
    <out_dir>/1_Pooling/config.json              mean pooling over 32 dimensions
    <out_dir>/2_Normalize/
    <out_dir>/README.md                          the model card sentence-transformers writes

The WordPiece vocabulary (saved inside ``tokenizer.json``) is written by code: the BERT specials, lower-case ASCII letters,
digits and punctuation (each also as a ``##`` continuation piece, so every ASCII word
tokenizes) and a few whole words. Weights come from ``torch.manual_seed(0)``: deterministic.

**Its vectors are random projections of the tokens, not semantics.** Texts sharing many
tokens land near each other; meaning plays no part. It exists so tests and the embedded
default run travel the real path (tokenizer → BERT → pooling → normalisation → Qdrant).
"""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

NAME = "tiny-minilm"
HIDDEN_SIZE = 32
MAX_SEQ_LENGTH = 128
_SEED = 0
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_WORDS = (
    "the a an of and or to in on for with is are was be this that it as by at from not "
    "document page text chunk vector search query answer model studio cat dog red blue green"
).split()


def vocab_tokens() -> list[str]:
    """The WordPiece vocabulary, in id order."""
    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = list(_SPECIALS) + pieces + ["##" + p for p in pieces]
    tokens += [w for w in _WORDS if w not in tokens]
    return tokens


def make_tiny_embedder(out_dir: Path, *, hidden_size: int = HIDDEN_SIZE, layers: int = 2, heads: int = 4,
                       intermediate_size: int = 37) -> Path:
    """Write the tiny sentence-transformers model into ``out_dir``; return ``out_dir``. The sizes are for
    benchmarks (e.g. all-MiniLM-L6-v2's shape: 384 wide, 6 layers, 12 heads, 1536), still random."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer  # transformers 5: the fast one (BertTokenizerFast)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = vocab_tokens()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True,
                                      model_max_length=MAX_SEQ_LENGTH)
        tokenizer.save_pretrained(str(base))
        config = BertConfig(
            vocab_size=len(tokens),
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=512,
            pad_token_id=0,
        )
        torch.manual_seed(_SEED)
        BertModel(config).save_pretrained(str(base), safe_serialization=True)
        transformer = Transformer(str(base), max_seq_length=MAX_SEQ_LENGTH)
        pooling = Pooling(hidden_size, pooling_mode="mean")
        model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
        model.save(str(out))
    return out
