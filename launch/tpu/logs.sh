#!/usr/bin/env bash
# Follow the training log of one worker of the TPU VM (Ctrl-C stops following, not training).
#
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b launch/tpu/logs.sh            # worker 0
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b WORKER=3 launch/tpu/logs.sh   # worker 3
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b LOG=extract launch/tpu/logs.sh  # the feature extraction's log
#
# Env: TPU_NAME, ZONE (required); WORKER (default 0); LOG (train or extract, default train);
#      TAIL_LINES (default 100); REMOTE_DIR;
#      PROJECT; DRY_RUN=1 prints, runs nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WORKER=${WORKER:-0}
LOG=${LOG:-train}
[[ "$LOG" == train || "$LOG" == extract ]] || die "LOG must be train or extract, not '$LOG'."
TAIL_LINES=${TAIL_LINES:-100}
[[ "$WORKER" =~ ^[0-9]+$ ]] || die "WORKER must be a worker index (0, 1, ...), not '$WORKER'."
[[ "$TAIL_LINES" =~ ^[0-9]+$ ]] || die "TAIL_LINES must be a number of lines, not '$TAIL_LINES'."
printf -v dir '%q' "$REMOTE_DIR"

echo "Following ~/$REMOTE_DIR/logs/$LOG.log on worker $WORKER of $TPU_NAME"
tpu_vm ssh "$TPU_NAME" --worker="$WORKER" --command "tail -n $TAIL_LINES -F $dir/logs/$LOG.log"
