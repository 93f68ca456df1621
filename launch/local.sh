#!/usr/bin/env bash
# Train on this machine (CPU or all its local GPUs/TPU chips), logging to $WORKDIR/train.log.
#
#   launch/local.sh CONFIG WORKDIR [extra train flags...]
#   launch/local.sh configs/rqvae/demo.py /tmp/rqvae_demo --config.train.batch_size=64
#
# Env: PYTHON (default python3), LOG (default $WORKDIR/train.log; ./train.log for a gs:// WORKDIR),
#      DRY_RUN=1 prints the commands instead of running them.
# Run it from the repo root (config paths are relative to it). Re-running resumes from WORKDIR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="usage: launch/local.sh CONFIG WORKDIR [train flags...], e.g. launch/local.sh configs/rqvae/demo.py /tmp/demo"
CONFIG=${1:?missing CONFIG (a configs/<stage>/<setting>.py file); $USAGE}
WORKDIR=${2:?missing WORKDIR (where checkpoints and logs go); $USAGE}
shift 2
PYTHON=${PYTHON:-python3}

if [[ "$WORKDIR" == *://* ]]; then LOG=${LOG:-train.log}; else LOG=${LOG:-$WORKDIR/train.log}; fi

echo "Training $CONFIG into $WORKDIR on this machine, log: $LOG"
if [[ "$WORKDIR" != *://* ]]; then run mkdir -p "$WORKDIR"; fi
cmd=("$PYTHON" -m rq_jax.train --config "$CONFIG" --workdir "$WORKDIR" "$@")
printf '+ %s 2>&1 | tee -a %s\n' "$(show_cmd "${cmd[@]}")" "$(show_cmd "$LOG")"
if is_dry_run; then exit 0; fi
"${cmd[@]}" 2>&1 | tee -a "$LOG"
