#!/usr/bin/env bash
# Extract the stage-2 features on every worker of the TPU VM, in the background (nohup): each worker encodes
# every N-th shard with all its chips; worker 0 writes meta.json when all shards exist. The output directory
# must be one filesystem all workers share (a gcsfuse mount or Filestore NFS: ArrayRecord files are not
# written to gs:// directly); the stage-1 workdir may be gs://. Each worker appends its output to its own
# ~/$REMOTE_DIR/logs/extract.log (LOG=extract launch/tpu/logs.sh). Rerunning the same command after a
# preemption continues from the complete shards.
#
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b launch/tpu/extract.sh RQVAE_WORKDIR OUT_DIR [extract flags...]
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b launch/tpu/extract.sh gs://BUCKET/rqvae_in /mnt/features/imagenet
#
# Env: TPU_NAME, ZONE (required); REMOTE_DIR (default rq_jax); REMOTE_PYTHON (default python3);
#      PROJECT; DRY_RUN=1 prints, runs nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="usage: launch/tpu/extract.sh RQVAE_WORKDIR OUT_DIR [extract flags...]"
RQVAE=${1:?missing RQVAE_WORKDIR (the trained stage-1 run); $USAGE}
OUT=${2:?missing OUT_DIR (the feature directory, on a filesystem all workers share); $USAGE}
shift 2
if [[ "$OUT" == gs://* ]]; then
  die "OUT_DIR=$OUT: ArrayRecord shards cannot be written to gs:// directly; mount the bucket (gcsfuse) or use NFS."
fi

echo "Extracting features of $RQVAE -> $OUT on all workers of $TPU_NAME (logs: ~/$REMOTE_DIR/logs/extract.log)"
start_on_all_workers extract "$REMOTE_PYTHON" -m rq_jax.extract --rqvae "$RQVAE" --out "$OUT" "$@"
