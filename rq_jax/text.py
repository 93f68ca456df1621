"""Text tokenization for text-conditioned RQ-Transformers, offline.

Two sources of a BPE tokenizer (HF `tokenizers`), both local files:
  * trained here on the dataset's captions (`train_tokenizer`, e.g. the emoji names of the demo),
    saved as one `tokenizer.json`;
  * the official CC-3M tokenizer: CharBPE from its `vocab.json` + `merges.txt` (`load_tokenizer`
    with a directory holding them).
`encode_texts` pads/truncates to the model's text length; a prompt longer than that is an error
when sampling (the user should know it would be cut) and truncated when training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

PAD = "[PAD]"


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - it is an install requirement
        raise ImportError("Text conditioning needs the `tokenizers` package: pip install tokenizers") from e
    return tokenizers


def train_tokenizer(texts: Sequence[str], vocab_size: int, out_path: str | None = None):
    """A lower-cased byte-level-free BPE tokenizer trained on `texts` (deterministic for given texts)."""
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE(unk_token="[UNK]"))
    tok.normalizer = tk.normalizers.Sequence([tk.normalizers.NFKC(), tk.normalizers.Lowercase()])
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, "[UNK]"], show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        tok.save(out_path)
    return tok


def load_tokenizer(path: str):
    """A `tokenizer.json`, or a directory with it or with CharBPE `vocab.json` + `merges.txt`."""
    tk = _tokenizers()
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            path = os.path.join(path, "tokenizer.json")
        elif os.path.exists(os.path.join(path, "vocab.json")) and os.path.exists(os.path.join(path, "merges.txt")):
            # the official CC-3M tokenizer: lower-cased CharBPE with "[UNK]"
            tok = tk.CharBPETokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"),
                                      unk_token="[UNK]", lowercase=True)
            return tok
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No tokenizer at {path}: expected a tokenizer.json, or a directory with vocab.json and merges.txt."
        )
    return tk.Tokenizer.from_file(path)


def pad_id(tok) -> int:
    i = tok.token_to_id(PAD)
    return 0 if i is None else int(i)


def encode_texts(tok, texts: Sequence[str], text_len: int, *, strict: bool = False) -> np.ndarray:
    """int32 [len(texts), text_len] token ids, right-padded; `strict`: too-long prompts are an error."""
    out = np.full((len(texts), text_len), pad_id(tok), np.int32)
    for i, text in enumerate(texts):
        ids = tok.encode(text).ids
        if len(ids) > text_len:
            if strict:
                raise ValueError(
                    f"The prompt {text!r} is {len(ids)} tokens long but the model takes at most {text_len}; "
                    "shorten it."
                )
            ids = ids[:text_len]
        out[i, : len(ids)] = ids
    return out
