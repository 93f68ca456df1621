"""Soft-label ablation of the demo's stage 2: what the targets' temperature does to the generator.

  python -m benchmarks.soft_label_ablation --rqvae workdirs/demo/rqvae --features workdirs/demo/features \
      --out workdirs/ablation

Trains `configs/transformer/demo.py` once per setting on the same stage-1 run and features, samples
`--num` images per class (all classes), and judges them with `python -m rq_jax.evaluate judge`. Settings
(`--settings`, comma-separated):

  * a number (`0.5`): one tau for every depth, the paper's recipe (stochastic codes, soft labels);
  * `auto:<bits>`: tau solved per depth for that mean target entropy (see README, "Soft labels");
  * `onehot`: deterministic codes and one-hot targets (no soft labels).

Prints a Markdown table: the targets' entropy per depth (what the model is asked to predict), the
validation bits/code and per-depth accuracy on deterministic codes, and the judge's class accuracy and
demo FID. Each run is a real `python -m rq_jax.train` / `rq_jax.sample` / `rq_jax.evaluate` subprocess,
so the table is what a user would get; the workdirs stay under --out to look at (samples.png).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setting_overrides(setting: str) -> list[str]:
    """Command-line overrides of the stage-2 config for one ablation setting."""
    if setting == "onehot":
        return ["--config.soft.soft_labels=False", "--config.soft.stochastic_codes=False"]
    if not setting.startswith("auto:"):
        float(setting)  # a plain tau: fails here, with the setting in the message, when it is not a number
    return [f"--config.soft.temperature={setting}"]


def run(cmd: list[str], log_path: str) -> str:
    """Runs one command with its output in `log_path` (to follow with tail -f); raises with the log's tail when
    it fails, and returns the output."""
    t0 = time.time()
    with open(log_path, "w") as f:
        code = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True).returncode
    with open(log_path) as f:
        out = f.read()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} ... failed (exit code {code}); see {log_path}:\n{out[-3000:]}")
    print(f"  {' '.join(cmd[1:4])}: {time.time() - t0:.0f} s", flush=True)
    return out


def parse_train_log(out: str) -> dict:
    """Target entropies and the last evaluation (bits/code, per-depth accuracy) from a stage-2 log."""
    result: dict = {}
    m = re.search(r"target entropy ([\d./ ]+) bits", out)
    if m:
        result["target_bits"] = [float(x) for x in m.group(1).strip().split("/")]
    m = re.search(r"soft labels: tau ([\d.e/+-]+) per depth", out)
    if m:
        result["tau"] = m.group(1).strip()
    evals = re.findall(r"eval step (\d+): ([\d.]+) bits/code .*acc \[([^\]]*)\]", out)
    if evals:
        step, bits, acc = evals[-1]
        result.update(step=int(step), bits_per_code=float(bits), acc=[float(a) for a in acc.split()])
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soft_label_ablation", description=__doc__.splitlines()[0])
    p.add_argument("--rqvae", required=True, help="the stage-1 run")
    p.add_argument("--features", required=True, help="its extracted features (python -m rq_jax.extract)")
    p.add_argument("--out", required=True, help="a folder for the stage-2 runs, samples and the table")
    p.add_argument("--settings", default="0.5,auto:1.0,onehot")
    p.add_argument("--config", default="configs/transformer/demo.py")
    p.add_argument("--data_config", default="configs/rqvae/demo.py")
    p.add_argument("--num", type=int, default=32, help="samples per class for the judge")
    p.add_argument("--extra", action="append", default=[], help="more --config.* overrides for every run")
    args = p.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    rows = []
    for setting in args.settings.split(","):
        name = setting.replace(":", "_")
        workdir = os.path.join(args.out, name)
        print(f"{setting}: {workdir}", flush=True)
        train = [sys.executable, "-m", "rq_jax.train", f"--config={args.config}", f"--workdir={workdir}",
                 f"--config.rqvae_workdir={args.rqvae}", f"--config.data.features_dir={args.features}",
                 *setting_overrides(setting), *args.extra]
        row = dict(setting=setting, **parse_train_log(run(train, os.path.join(args.out, f"{name}_train.log"))))
        if setting == "onehot":
            row["tau"] = "- (argmin codes)"  # tau plays no part
        samples = os.path.join(workdir, "samples.png")
        run([sys.executable, "-m", "rq_jax.sample", f"--workdir={workdir}", "--classes=all",
             f"--num={args.num}", f"--out={samples}"], os.path.join(args.out, f"{name}_sample.log"))
        judge_json = os.path.join(workdir, "judge.json")
        run([sys.executable, "-m", "rq_jax.evaluate", "judge", f"--samples={samples[:-4]}.npz",
             f"--data_config={args.data_config}", f"--out={judge_json}"], os.path.join(args.out, f"{name}_judge.log"))
        with open(judge_json) as f:
            j = json.load(f)
        row.update(judge_accuracy=j["conditional_accuracy"], demo_fid=j["demo_fid"],
                   fid_floor=j.get("demo_fid_real_val_same_n", j["demo_fid_real_val"]), num_samples=j["num_samples"])
        rows.append(row)
        with open(os.path.join(args.out, "ablation.json"), "w") as f:
            json.dump(rows, f, indent=2)

    def fmt(xs, nd=2):
        return "/".join(f"{x:.{nd}f}" for x in xs) if xs else "-"

    lines = ["| setting | tau per depth | target entropy (bits) | val bits/code | val acc per depth | judge acc | "
             "demo FID (floor) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r.get('tau', '-')} | {fmt(r.get('target_bits'))} | "
                     f"{r.get('bits_per_code', float('nan')):.3f} | {fmt(r.get('acc'), 3)} | "
                     f"{r['judge_accuracy']:.3f} | {r['demo_fid']:.2f} ({r['fid_floor']:.2f}) |")
    table = "\n".join(lines)
    print(f"\n{rows[0]['num_samples'] if rows else 0} samples per setting\n{table}")
    with open(os.path.join(args.out, "ablation.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
