"""The official text tokenizer of the CC-3M model: finding its CharBPE files and building it.

`tokenizers` is imported only when a tokenizer is built.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

from rq_jax.convert.official_checkpoint import OFFICIAL_REPO
from rq_jax.convert.official_yaml import yaml_value

TOKENIZER_PREFIXES = {"bpe16k_huggingface": "bpe-16k", "bpe30k_huggingface": "bpe-30k"}


def find_tokenizer_files(yaml_cfg: Mapping[str, Any] | None, dirs: list[str]) -> tuple[str, str]:
    """(vocab.json, merges.txt) of the official CharBPE tokenizer named in the yaml, from the first dir having them."""
    name = str(yaml_value(yaml_cfg, "dataset.txt_tok_name") or "bpe16k_huggingface")
    if name not in TOKENIZER_PREFIXES:
        raise ValueError(f"dataset.txt_tok_name = {name!r} is not supported; rq_jax reads the CharBPE tokenizers "
                         f"{', '.join(TOKENIZER_PREFIXES)}.")
    prefix = TOKENIZER_PREFIXES[name]
    for d in dirs:
        for vocab, merges in ((f"{prefix}-vocab.json", f"{prefix}-merges.txt"), ("vocab.json", "merges.txt")):
            if os.path.isfile(os.path.join(d, vocab)) and os.path.isfile(os.path.join(d, merges)):
                return os.path.join(d, vocab), os.path.join(d, merges)
    raise FileNotFoundError(
        f"The text-conditioned model needs the {name} tokenizer files {prefix}-vocab.json and {prefix}-merges.txt, "
        f"not found in {', '.join(dirs)}: pass --tokenizer_dir with the folder holding them "
        f"(rqvae/txtimg_datasets/tokenizers/pretrained/ of {OFFICIAL_REPO})."
    )


def build_tokenizer(vocab: str, merges: str) -> Any:
    """The official text tokenizer: CharBPE, lower-cased, '[UNK]' unknown token, '[PAD]' special token."""
    from tokenizers import CharBPETokenizer

    tok = CharBPETokenizer.from_file(vocab, merges, unk_token="[UNK]", lowercase=True)
    tok.add_special_tokens(["[PAD]"])
    return tok


def save_tokenizer(stage2_dir: str, vocab: str, merges: str, tok: Any) -> None:
    """The tokenizer files of a converted text model: STAGE2/tokenizer/{vocab.json, merges.txt, tokenizer.json}
    (the config's `text.tokenizer`) and STAGE2/tokenizer.json."""
    tok_dir = os.path.join(stage2_dir, "tokenizer")
    os.makedirs(tok_dir, exist_ok=True)
    shutil.copyfile(vocab, os.path.join(tok_dir, "vocab.json"))
    shutil.copyfile(merges, os.path.join(tok_dir, "merges.txt"))
    tok.save(os.path.join(tok_dir, "tokenizer.json"))
    tok.save(os.path.join(stage2_dir, "tokenizer.json"))
