"""`python -m rq_jax.evaluate`: reconstruction metrics of an RQ-VAE run, reconstructions as PNGs, FID/IS.

  recon        --workdir RUN [--step N] [--num_batches N] [--batch_size B] [--lpips PATH] [--inception PATH]
               [--out JSON]: over the run's held-out split (its config.data): PSNR, SSIM, LPIPS (with
               --lpips), PSNR per decoding depth (coarse-to-fine), codebook perplexity/usage/dead codes
               per depth, and rFID (with --inception: Inception features of inputs vs reconstructions).
               Prints a table and writes JSON (default <workdir>/recon_metrics_<step>.json).
  reconstruct  --workdir RUN [--num N] --out DIR: per image, input | reconstruction | depth 1..D as one PNG,
               and one grid (rows: inputs, then the depth-1..D reconstructions).
  fid          --real DIR_OR_NPZ --fake DIR_OR_NPZ --inception PATH: FID between two image sets, each an
               image folder, an `.npz` of uint8 images [N, H, W, 3] (`arr_0` or `images`) or an `.npz` of
               statistics (`mu`, `sigma`: pytorch-fid's and ADM's format); and the Inception Score of the
               fake set when it is images.

  generate     --workdir STAGE2_RUN --ref DIR_OR_NPZ --inception PATH [--num 50000] [--batch_size B]
               [--top_k/--top_p/--temperature/--cfg_scale] [--prompts FILE] [--save_images DIR] [--save_npz F]
               [--precision_recall] [--out JSON]: samples N images (classes balanced, the run's sampling
               settings; sharded over all devices), decodes them and reports FID, IS and optionally
               improved precision/recall against --ref (see rq_jax/eval/generate.py).
  judge        --samples S.npz --data_config CONFIG.py [--judge PATH] [--steps N] [--out JSON]: judges the
               conditional samples of `python -m rq_jax.sample` (`images`, `cond`) with a small CNN trained
               on the real data of the config's `data` section (trained and cached at --judge when missing,
               see rq_jax/eval/judge.py): the fraction classified as their requested class vs chance, per class,
               and a "demo FID" on the judge's penultimate 128-d features, with a real-validation floor.

Weights are read from local files written by `python -m rq_jax.convert lpips|inception`. The evaluation
runs in one process and reads the whole split itself (no multi-host sharding).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from rq_jax import cli

if __name__ == "__main__":  # before JAX starts: may re-execute on tcmalloc (rq_jax/allocator.py)
    cli.preload_allocator()

from rq_jax.eval import image_sets, recon
from rq_jax.eval.io import write_json


def _run_recon(args: argparse.Namespace) -> None:
    result = recon.evaluate_reconstruction(
        args.workdir, step=args.step, num_batches=args.num_batches, batch_size=args.batch_size, split=args.split,
        lpips_path=args.lpips, inception_path=args.inception,
    )
    out = args.out or os.path.join(args.workdir, f"recon_metrics_{result['step']}.json")
    write_json(out, result)
    print(recon.format_recon_table(result))
    print(f"wrote {out}")
    bad = non_finite(result)
    if bad:
        raise ValueError(f"{', '.join(bad)} of step {result['step']} are NaN/Inf (written to {out}): the checkpoint "
                         "holds a diverged model; evaluate an earlier step with --step.")


def non_finite(result: dict) -> list[str]:
    """The names of the numeric entries of a result (numbers or lists of numbers) that are NaN/Inf."""
    bad = []
    for key, value in result.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            bad.append(key)
    return bad


def _run_reconstruct(args: argparse.Namespace) -> None:
    paths = recon.write_reconstructions(args.workdir, args.out, num=args.num, step=args.step, split=args.split)
    print(f"wrote {len(paths) - 1} reconstructions and {paths[-1]}")


def _run_fid(args: argparse.Namespace) -> None:
    result = image_sets.compute_fid(args.real, args.fake, args.inception, batch_size=args.batch_size,
                                    is_splits=args.is_splits, save_real_stats=args.save_real_stats,
                                    min_images=1 if args.allow_small else args.min_images, resize=args.resize)
    for name in ("real", "fake"):
        if result.get(f"num_{name}_unreadable"):
            print(f"skipped {result[f'num_{name}_unreadable']} unreadable {name} images")
    print(f"FID {result['fid']:.4f}")
    if "inception_score" in result:
        print(f"IS  {result['inception_score']:.4f} +- {result['inception_score_std']:.4f} "
              f"({result['inception_score_splits']} splits)")
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")


def _run_generate(args: argparse.Namespace) -> None:
    from rq_jax.eval import generate

    result = generate.generate_and_evaluate(
        args.workdir, ref=args.ref, inception_path=args.inception, num=args.num, batch_size=args.batch_size,
        seed=args.seed, step=args.step, rqvae=args.rqvae, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, cfg_scale=args.cfg_scale, num_classes=args.num_classes, prompts_file=args.prompts,
        save_images=args.save_images, save_npz=args.save_npz, save_ref_stats=args.save_ref_stats,
        precision_recall=args.precision_recall, pr_k=args.pr_k, is_splits=args.is_splits,
    )
    out = args.out or os.path.join(args.workdir, f"generate_metrics_{result['step']}_{result['num_samples']}.json")
    write_json(out, result)
    print(generate.format_report(result))
    print(f"wrote {out}")


def _run_judge(args: argparse.Namespace) -> None:
    from rq_jax.eval import judge

    if not os.path.isfile(args.samples):  # before loading the config or any data
        raise FileNotFoundError(f"The samples file {args.samples!r} does not exist; write one with "
                                "`python -m rq_jax.sample --workdir STAGE2 --classes ... --out s.png`.")
    result = judge.judge_samples(args.samples, judge.data_config_from_file(args.data_config),
                                 judge_path=args.judge, train_steps=args.steps, seed=args.seed,
                                 requested_classes=[int(c) for c in args.classes.split(",")] if args.classes else None)
    print(judge.format_judge_report(result))
    out = args.out or os.path.splitext(args.samples)[0] + "_judge.json"
    write_json(out, result)
    print(f"wrote {out}")


def _add_generate_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds the `generate` subcommand (rq_jax.eval.generate) to the subparsers."""
    g = sub.add_parser("generate", help="sample N images from a stage-2 run (sharded over all devices), FID/IS")
    g.add_argument("--workdir", required=True, help="stage-2 run directory (trained or converted)")
    g.add_argument("--ref", required=True, help="reference: image folder, image .npz (arr_0) or statistics .npz "
                   "(mu, sigma: pytorch-fid's / ADM's files)")
    g.add_argument("--inception", required=True, help="Inception weights (.npz from python -m rq_jax.convert "
                   "inception)")
    g.add_argument("--num", type=int, default=50000, help="number of samples (the paper: 50000)")
    g.add_argument("--batch_size", type=int, default=256, help="samples per step over all devices (rounded up "
                   "to a multiple of the device count)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--step", type=int, default=None, help="stage-2 checkpoint step (default: the latest)")
    g.add_argument("--rqvae", default=None, help="the stage-1 run (default: the one in the stage-2 config)")
    g.add_argument("--top_k", default=None, help="default: the run's config.sample.top_k; one value or per depth")
    g.add_argument("--top_p", default=None, help="default: config.sample.top_p")
    g.add_argument("--temperature", default=None, help="default: config.sample.temperature")
    g.add_argument("--cfg_scale", type=float, default=None, help="default: config.sample.cfg_scale")
    g.add_argument("--num_classes", type=int, default=None, help="class models: balance over classes "
                   "0..C-1 (default: the dataset's classes from the features' meta.json, else the model's)")
    g.add_argument("--prompts", default=None, help="text models: a file with one prompt per line (cycled)")
    g.add_argument("--save_images", default=None, help="also write every sample as DIR/NNNNNN.png")
    g.add_argument("--save_npz", default=None, help="also write the samples as an .npz (arr_0 uint8 images, "
                   "arr_1 labels: ADM's layout; all N images are held in memory)")
    g.add_argument("--save_ref_stats", default=None, help="write the reference's mu/sigma to this .npz")
    g.add_argument("--precision_recall", action="store_true", help="also improved precision/recall (needs "
                   "reference images, not statistics)")
    g.add_argument("--pr_k", type=int, default=3, help="k of the precision/recall k-NN radii")
    g.add_argument("--is_splits", type=int, default=10)
    g.add_argument("--out", default=None, help="JSON output (default: <workdir>/generate_metrics_<step>_<N>.json)")
    g.set_defaults(run=_run_generate)
    return g


def build_parser() -> argparse.ArgumentParser:
    """The `python -m rq_jax.evaluate` argument parser (subcommands recon, reconstruct, fid, generate, judge)."""
    parser = argparse.ArgumentParser(
        prog="python -m rq_jax.evaluate", description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    recon = sub.add_parser("recon", help="reconstruction metrics of a stage-1 run on its held-out split")
    recon.add_argument("--workdir", required=True, help="stage-1 run directory (config.json + checkpoints)")
    recon.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    recon.add_argument("--num_batches", type=int, default=None, help="at most this many batches (default: all)")
    recon.add_argument("--batch_size", type=int, default=32)
    recon.add_argument("--split", default="validation")
    recon.add_argument("--lpips", default=None, help="LPIPS weights (.npz from python -m rq_jax.convert lpips)")
    recon.add_argument("--inception", default=None, help="Inception weights (.npz from python -m rq_jax.convert "
                       "inception): adds rFID")
    recon.add_argument("--out", default=None, help="JSON output (default: <workdir>/recon_metrics_<step>.json)")
    recon.set_defaults(run=_run_recon)

    rec = sub.add_parser("reconstruct", help="PNGs of inputs, reconstructions and coarse-to-fine partial decodes")
    rec.add_argument("--workdir", required=True)
    rec.add_argument("--step", type=int, default=None)
    rec.add_argument("--num", type=int, default=16, help="number of held-out images")
    rec.add_argument("--split", default="validation")
    rec.add_argument("--out", required=True, help="output folder")
    rec.set_defaults(run=_run_reconstruct)

    f = sub.add_parser("fid", help="FID between image folders / statistics files, IS of the fake set")
    f.add_argument("--real", required=True, help="image folder, image .npz (arr_0) or statistics .npz (mu, sigma)")
    f.add_argument("--fake", required=True, help="image folder, image .npz (arr_0) or statistics .npz (mu, sigma)")
    f.add_argument("--inception", required=True,
                   help="Inception weights (.npz from python -m rq_jax.convert inception)")
    f.add_argument("--batch_size", type=int, default=50)
    f.add_argument("--is_splits", type=int, default=10, help="Inception Score splits (the standard is 10)")
    f.add_argument("--save_real_stats", default=None, help="also write the real set's mu/sigma to this .npz")
    f.add_argument("--min_images", type=int, default=image_sets.MIN_FID_IMAGES,
                   help="the fewest readable images per set (FID below ~2,048 is biased and noisy)")
    f.add_argument("--allow_small", action="store_true", help="compute FID from sets of any size (tests)")
    f.add_argument("--resize", action="store_true",
                   help="accept images of mixed sizes, each resized to 299x299 (default: one size or an error)")
    f.add_argument("--out", default=None, help="JSON output")
    f.set_defaults(run=_run_fid)

    _add_generate_parser(sub)

    j = sub.add_parser("judge", help="class accuracy and demo FID of conditional samples under a small trained CNN")
    j.add_argument("--samples", required=True, help=".npz from python -m rq_jax.sample (images uint8, cond)")
    j.add_argument("--data_config", required=True, help="config .py whose get_config().data is the real data "
                   "(e.g. configs/rqvae/demo.py)")
    j.add_argument("--judge", default=None, help="judge weights .npz, trained and cached there when missing "
                   "(default: judge_<dataset>_<size>....npz in the embedded-data cache folder)")
    j.add_argument("--steps", type=int, default=1200, help="training steps of a new judge")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--classes", default="", help="comma-separated class ids, one per grid row, instead of the "
                   "samples' own classes (e.g. the classes of text prompts' emoji)")
    j.add_argument("--out", default=None, help="JSON output (default: <samples>_judge.json)")
    j.set_defaults(run=_run_judge)
    return parser


def _main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and runs the subcommand; user errors exit 1 with one line (rq_jax.cli)."""
    cli.guard(_main, argv)


if __name__ == "__main__":
    main()
