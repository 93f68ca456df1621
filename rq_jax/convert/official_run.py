"""An official checkpoint (and, for stage 2, its stage-1 RQ-VAE) -> rq_jax run directories under OUT.

`convert_official` reads and checks everything before it writes anything: OUT/stage1[, OUT/stage2] (each
a config.json and an orbax checkpoint at step 0, the state the trainers save), the text tokenizer of a
text model, OUT/conversion_report.txt and the weights' licence.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

import ml_collections

from rq_jax.convert.official_checkpoint import (
    OFFICIAL_REPO,
    OfficialCheckpoint,
    checkpoint_file,
    read_official_checkpoint,
)
from rq_jax.convert.official_rqvae_config import stage1_config_from_official
from rq_jax.convert.official_tokenizer import build_tokenizer, find_tokenizer_files, save_tokenizer
from rq_jax.convert.official_transformer_config import stage2_config_from_official
from rq_jax.convert.official_weights import ConvertedStage, convert_stage1, convert_stage2
from rq_jax.convert.official_yaml import STAGE1, STAGE2, checkpoint_stage, yaml_value

LICENSE_TEXT = f"""\
Licence of the converted weights
================================

The weights in this directory were converted by rq_jax (`python -m rq_jax.convert official`) from the
pretrained checkpoints that Kakao Brain released with "Autoregressive Image Generation using Residual
Quantization" (Lee et al., CVPR 2022): {OFFICIAL_REPO}

The official README states: "The pretrained weights are licensed under CC-BY-NC-SA 4.0 License." and
"We note that any commercial use of our checkpoints is strictly prohibited."

The converted weights are an adaptation (a change of file format and array layout, no retraining) of
those weights and keep their licence, Creative Commons Attribution-NonCommercial-ShareAlike 4.0
International (CC BY-NC-SA 4.0), https://creativecommons.org/licenses/by-nc-sa/4.0/ :
  * Attribution: credit Kakao Brain and the paper, link the licence, and say that the weights were converted;
  * NonCommercial: no commercial use;
  * ShareAlike: these weights, and models derived from them (e.g. by fine-tuning), may only be shared
    under the same licence.
The licence of rq_jax's source code does not apply to these weights.
"""

Tokenizer = tuple[str, str, Any]  # (vocab.json, merges.txt, the built tokenizer)


def stage1_candidates(stage2: OfficialCheckpoint) -> list[str]:
    """Where a stage-2 checkpoint's stage-1 RQ-VAE may be: its yaml's `vqvae` path, then the sibling ../stage1."""
    here = os.path.dirname(stage2.path)
    out = []
    vqvae = yaml_value(stage2.yaml, "vqvae")
    ref = yaml_value(vqvae, "ckpt") if isinstance(vqvae, Mapping) else vqvae
    if isinstance(ref, str) and ref:
        out += [ref, os.path.join(here, ref)]
        parent = os.path.basename(os.path.dirname(os.path.normpath(ref)))
        if parent:
            out.append(os.path.join(here, "..", parent, os.path.basename(ref)))
    out.append(os.path.join(here, "..", "stage1"))
    return [os.path.normpath(p) for p in out]


def _read_stage1_of(main: OfficialCheckpoint, stage1: str | None, allow_pickle: bool, ema: bool,
                    report: list[str]) -> OfficialCheckpoint:
    """The stage-1 checkpoint of the stage-2 checkpoint `main`: `stage1`, else the first candidate found."""
    if stage1 is None:
        tried = stage1_candidates(main)
        found = [p for p in tried if os.path.isfile(p) or os.path.isfile(os.path.join(p, "model.pt"))]
        if not found:
            raise FileNotFoundError(
                f"{main.path} is a stage-2 (RQ-Transformer) checkpoint and its stage-1 RQ-VAE was not found "
                f"(tried {', '.join(tried)}): pass --stage1 with its folder or model.pt."
            )
        stage1 = found[0]
    first = read_official_checkpoint(stage1, allow_pickle=allow_pickle, ema=ema)
    if checkpoint_stage(first.shapes, first.yaml, first.path) != STAGE1:
        raise ValueError(f"--stage1 {first.path} is not a stage-1 (RQ-VAE) checkpoint.")
    if first.yaml is None and isinstance(yaml_value(main.yaml, "vqvae.hparams"), Mapping):
        first.yaml = {"arch": main.yaml["vqvae"]}  # the stage-1 arch recorded in the stage-2 yaml
        report.append(f"note: no config.yaml beside {first.path}: its arch was read from the `vqvae` entry of "
                      f"{main.yaml_path}")
    report.append(f"source of stage 1: {first.path} (config.yaml: {first.yaml_path or 'none'})")
    return first


def _text_tokenizer(second: OfficialCheckpoint, config2: ml_collections.ConfigDict, stage2_dir: str,
                    tokenizer_dir: str | None, report: list[str]) -> Tokenizer | None:
    """The official tokenizer of a text model, checked against its embedding and recorded in `config2.text`."""
    if config2.model.cond != "text":
        if tokenizer_dir:
            report.append("note: --tokenizer_dir ignored: the model is not text-conditioned")
        return None
    here = os.path.dirname(second.path)
    search = [tokenizer_dir] if tokenizer_dir else [here, os.path.join(here, ".."), os.path.join(here, "tokenizer")]
    vocab, merges = find_tokenizer_files(second.yaml, [os.path.normpath(d) for d in search])
    tok = build_tokenizer(vocab, merges)
    size = tok.get_vocab_size()
    if size > config2.model.text_vocab_size:
        raise ValueError(f"The tokenizer {vocab} has {size} tokens but the model's cond_emb has "
                         f"{config2.model.text_vocab_size} rows: it is not this model's tokenizer.")
    config2.text.tokenizer = os.path.join(stage2_dir, "tokenizer")
    config2.text.vocab_size = size
    report.append(f"text tokenizer: {vocab} + {merges} ({size} tokens, lower-cased CharBPE) -> "
                  f"{stage2_dir}/tokenizer.json and {config2.text.tokenizer}/")
    return vocab, merges, tok


def _summary(converted: list[ConvertedStage], dirs: dict[str, str]) -> list[str]:
    """The per-tensor lines of every stage, then one count line per stage."""
    lines = [line for c in converted for line in c.report]
    for c in converted:
        n = sum(" -> " in r and "alias" not in r for r in c.report)
        a = sum("alias of" in r for r in c.report)
        i = sum("ignored:" in r for r in c.report)
        lines.append(f"summary {c.stage}: {n} tensors converted, {a} codebook aliases, {i} ignored -> {dirs[c.stage]}")
    return lines


def write_run(workdir: str, converted: ConvertedStage, source: OfficialCheckpoint) -> None:
    """One rq_jax run directory: the orbax checkpoint at step 0, config.json, the source yaml and the licence."""
    from rq_jax.checkpoints import Checkpointer

    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(workdir, max_to_keep=1, async_save=False, with_data=False)
    ckpt.save(0, converted.state, force=True)
    ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(converted.config.to_json_best_effort(indent=2))
    if source.yaml_path:
        shutil.copyfile(source.yaml_path, os.path.join(workdir, "official_config.yaml"))
    with open(os.path.join(workdir, "LICENSE_WEIGHTS.txt"), "w") as f:
        f.write(LICENSE_TEXT)


def _check_inputs_exist(ckpt: str, stage1: str | None, tokenizer_dir: str | None) -> None:
    """Names a missing input path before anything (PyTorch included) is loaded."""
    checkpoint_file(ckpt)
    if stage1 is not None:
        checkpoint_file(stage1)
    if tokenizer_dir and not os.path.isdir(tokenizer_dir):
        raise FileNotFoundError(f"--tokenizer_dir {tokenizer_dir} is not a folder.")


def convert_official(
    ckpt: str,
    out: str,
    *,
    stage1: str | None = None,
    tokenizer_dir: str | None = None,
    allow_pickle: bool = False,
    ema: bool = False,
) -> list[str]:
    """Converts an official checkpoint (and, for stage 2, its stage-1 RQ-VAE) into OUT/stage1[, OUT/stage2].

    Everything is read and checked before anything is written. Returns the report lines (also written to
    OUT/conversion_report.txt).
    """
    _check_inputs_exist(ckpt, stage1, tokenizer_dir)
    out = os.path.abspath(out)
    main = read_official_checkpoint(ckpt, allow_pickle=allow_pickle, ema=ema)
    stage = checkpoint_stage(main.shapes, main.yaml, main.path)
    report = [f"rq_jax.convert official: {main.path} ({stage}; config.yaml: {main.yaml_path or 'none'})"]
    if stage == STAGE1 and stage1 is not None:
        raise ValueError(f"{main.path} is a stage-1 (RQ-VAE) checkpoint: --stage1 is only for stage-2 checkpoints.")
    first = main if stage == STAGE1 else _read_stage1_of(main, stage1, allow_pickle, ema, report)
    second = None if stage == STAGE1 else main
    dirs = {STAGE1: os.path.join(out, "stage1"), STAGE2: os.path.join(out, "stage2")}
    for d in dirs.values() if second is not None else [dirs[STAGE1]]:
        if os.path.exists(os.path.join(d, "checkpoints")):
            raise FileExistsError(f"{d} already holds a checkpoint: choose another --out or delete it.")

    config1, notes1 = stage1_config_from_official(first.shapes, first.yaml, first.path)
    converted = [convert_stage1(first.state_dict, config1)]
    report += first.notes + notes1
    tokenizer = None
    if second is not None:
        config2, notes2 = stage2_config_from_official(second.shapes, second.yaml, config1, second.path)
        config2.rqvae_workdir = dirs[STAGE1]
        report += second.notes + notes2
        tokenizer = _text_tokenizer(second, config2, dirs[STAGE2], tokenizer_dir, report)
        converted.append(convert_stage2(second.state_dict, config2))
    report += _summary(converted, dirs)

    for c, source in zip(converted, [first, second], strict=False):
        write_run(dirs[c.stage], c, source)
    if tokenizer is not None:
        save_tokenizer(dirs[STAGE2], *tokenizer)
    with open(os.path.join(out, "LICENSE_WEIGHTS.txt"), "w") as f:
        f.write(LICENSE_TEXT)
    with open(os.path.join(out, "conversion_report.txt"), "w") as f:
        f.write("\n".join(report) + "\n")
    return report
