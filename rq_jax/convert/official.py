"""`python -m rq_jax.convert official`: a released official RQ-VAE / RQ-Transformer checkpoint -> rq_jax runs.

    python -m rq_jax.convert official --ckpt ffhq/stage2 --out ./workdirs/official_ffhq
    python -m rq_jax.convert official --ckpt in256_1.4B/stage2/model.pt --stage1 in256_1.4B/stage1 --out OUT
    python -m rq_jax.convert official --ckpt cc3m/stage2 --tokenizer_dir TOKENIZER_FILES --out OUT
    python -m rq_jax.convert official --ckpt ffhq/stage1 --out ./workdirs/official_ffhq_rqvae   # stage 1 only
    python -m rq_jax.sample --workdir ./workdirs/official_ffhq/stage2 --out ffhq.png

Input: a folder of the official release (`model.pt`, a dict whose `state_dict` holds the weights, with its
`config.yaml` beside it) or the `.pt` file itself (a plain state dict works too). A stage-2 checkpoint also
needs its stage-1 RQ-VAE: `--stage1`, else the `vqvae` path of its config.yaml, else the sibling `../stage1`.
The text-conditioned CC-3M model also needs the official CharBPE tokenizer files `bpe-16k-vocab.json` and
`bpe-16k-merges.txt` (rqvae/txtimg_datasets/tokenizers/pretrained/ in the official repository):
`--tokenizer_dir`, else they are looked for beside the checkpoint.

Output, under OUT: `stage1/` and, for a stage-2 checkpoint, `stage2/`: rq_jax run directories (config.json
and an orbax checkpoint at step 0, the state the trainers save: `gen` + `codebook` for stage 1, `params` for
stage 2) read by `load_rqvae`, `load_rq_transformer` and `python -m rq_jax.sample`. `stage2/config.json`
points at OUT/stage1 by an absolute `rqvae_workdir` (convert again after moving OUT); text models get
`stage2/tokenizer.json` and `stage2/tokenizer/` (the vocab/merges files and the tokenizer.json; the config's
`text.tokenizer`). Also `conversion_report.txt` (what happened to every source tensor) and
`LICENSE_WEIGHTS.txt`. Each stage folder keeps the source yaml as `official_config.yaml`.

Configs: config.yaml (`arch.ddconfig` / `arch.hparams` for stage 1; `arch`, `dataset`, `loss`, `optimizer`,
`sampling` for stage 2) is translated into `rqvae_config()` / `transformer_config(stage1)` and cross-checked
against the tensor shapes: a disagreement is one ValueError naming the yaml key and the tensor. Without
config.yaml the model is inferred from the shapes alone and the report lists the assumptions (256x256
images, num_heads = d_model / 64, rq_jax's training recipe). Tensor names and layouts are mapped by
`rq_jax.convert.rqvae` and `rq_jax.convert.rq_transformer` (conv OIHW -> HWIO, linear (out, in) ->
(in, out), positional embeddings (1, L, C) -> (L, C); the shared codebook's four aliases
`quantizer.codebooks.0..3` become one codebook without its zero padding row). A shape mismatch raises a
ValueError naming the tensor and both shapes.

Licence: the official pretrained weights are released by Kakao Brain under CC-BY-NC-SA 4.0
(https://creativecommons.org/licenses/by-nc-sa/4.0/; the official README: "The pretrained weights are
licensed under CC-BY-NC-SA 4.0 License" and "any commercial use of our checkpoints is strictly
prohibited"). The converted weights are an adaptation of those weights (a format conversion) and keep that
licence: attribution, non-commercial use only, and redistribution of them or of models derived from them
under the same licence. rq_jax's own licence covers its code, not these weights.

Needs PyTorch and PyYAML (`pip install torch pyyaml`, or `pip install -e .[convert]`), imported only here.
"""

from __future__ import annotations

import argparse
import os

from rq_jax.convert.official_run import convert_official

HELP = "official RQ-VAE / RQ-Transformer checkpoint (model.pt + config.yaml) -> rq_jax run directories"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `official` subcommand's flags."""
    parser.add_argument("--ckpt", required=True, help="official checkpoint: its folder (model.pt + config.yaml) or "
                        "the .pt file; stage 1 (RQ-VAE) or stage 2 (RQ-Transformer)")
    parser.add_argument("--stage1", default=None, help="for a stage-2 --ckpt: its stage-1 RQ-VAE checkpoint "
                        "(default: the config.yaml's vqvae path, else ../stage1)")
    parser.add_argument("--tokenizer_dir", default=None, help="text models (CC-3M): the folder with "
                        "bpe-16k-vocab.json and bpe-16k-merges.txt (default: beside the checkpoint)")
    parser.add_argument("--out", required=True, help="output folder: OUT/stage1, OUT/stage2 run directories")
    parser.add_argument("--ema", action="store_true", help="convert the file's state_dict_ema instead of state_dict")
    parser.add_argument("--allow_pickle", action="store_true", help="let torch.load unpickle Python objects "
                        "(only for files you trust, e.g. the official release)")


def run(args: argparse.Namespace) -> None:
    """Runs the conversion and prints the report's notes and summary (the full report is in OUT).

    Errors propagate; `python -m rq_jax.convert` turns the expected ones into one `error: ...` line.
    """
    report = convert_official(args.ckpt, args.out, stage1=args.stage1, tokenizer_dir=args.tokenizer_dir,
                              allow_pickle=args.allow_pickle, ema=args.ema)
    for line in report:
        if not line.startswith(("stage1  ", "stage2  ")) or "ignored:" in line or "WARNING" in line:
            print(line)
    print(f"per-tensor report: {os.path.join(os.path.abspath(args.out), 'conversion_report.txt')}; the weights keep "
          "the official CC-BY-NC-SA 4.0 licence (non-commercial, share-alike): see LICENSE_WEIGHTS.txt")
