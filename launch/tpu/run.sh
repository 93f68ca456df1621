#!/usr/bin/env bash
# Start training on every worker of the TPU VM, in the background (nohup): the command returns at
# once; each worker appends its output to its own ~/$REMOTE_DIR/logs/train.log (see logs.sh).
#
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b launch/tpu/run.sh CONFIG WORKDIR [extra train flags...]
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b launch/tpu/run.sh configs/rqvae/ffhq_8x8x4.py gs://BUCKET/rqvae_ffhq
#
# WORKDIR must be a gs:// path on a pod slice (every worker writes the same checkpoints).
# Re-running the same command (after a preemption, say) resumes from WORKDIR.
# Env: TPU_NAME, ZONE (required); REMOTE_DIR (default rq_jax); REMOTE_PYTHON (default python3);
#      PROJECT; DRY_RUN=1 prints, runs nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="usage: launch/tpu/run.sh CONFIG WORKDIR [train flags...]"
CONFIG=${1:?missing CONFIG (a configs/<stage>/<setting>.py file); $USAGE}
WORKDIR=${2:?missing WORKDIR (a gs://BUCKET/... directory for checkpoints); $USAGE}
shift 2
if [[ "$WORKDIR" != gs://* ]]; then
  warn "WORKDIR=$WORKDIR is not a gs:// path: on a multi-host slice all workers must share one checkpoint directory."
fi

echo "Starting $CONFIG -> $WORKDIR on all workers of $TPU_NAME (logs: ~/$REMOTE_DIR/logs/train.log, launch/tpu/logs.sh)"
start_on_all_workers train "$REMOTE_PYTHON" -m rq_jax.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
