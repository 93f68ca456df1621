#!/usr/bin/env bash
# Submit launch/gpu/slurm.sbatch for NODES nodes x GPUS_PER_NODE GPUs (one process per GPU).
#
#   NODES=2 GPUS_PER_NODE=8 launch/gpu/submit.sh CONFIG WORKDIR [extra train flags...]
#   NODES=2 launch/gpu/submit.sh configs/transformer/ffhq.py /shared/runs/ffhq --config.train.batch_size=256
#
# Env: NODES (default 1), GPUS_PER_NODE (default 8), PARTITION, ACCOUNT, TIME (e.g. 48:00:00),
#      DRY_RUN=1 prints the sbatch command only. Run from the repo root, environment active.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

USAGE="usage: launch/gpu/submit.sh CONFIG WORKDIR [train flags...]"
CONFIG=${1:?missing CONFIG (a configs/<stage>/<setting>.py file); $USAGE}
WORKDIR=${2:?missing WORKDIR (a run directory on a filesystem all nodes share); $USAGE}
shift 2
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
[[ "$CONFIG$WORKDIR" != *,* ]] || die "CONFIG and WORKDIR cannot contain commas (sbatch --export splits on them)."

flags=(--nodes="$NODES" --ntasks-per-node="$GPUS_PER_NODE" --gpus-per-task=1)
if [[ -n "${PARTITION:-}" ]]; then flags+=(--partition="$PARTITION"); fi
if [[ -n "${ACCOUNT:-}" ]]; then flags+=(--account="$ACCOUNT"); fi
if [[ -n "${TIME:-}" ]]; then flags+=(--time="$TIME"); fi
flags+=(--export="ALL,CONFIG=$CONFIG,WORKDIR=$WORKDIR")

echo "Submitting $CONFIG -> $WORKDIR on $NODES node(s) x $GPUS_PER_NODE GPU(s)"
run sbatch "${flags[@]}" "$(dirname "${BASH_SOURCE[0]}")/slurm.sbatch" "$@"
