#!/usr/bin/env bash
# Sourced by launch/tpu/*.sh (not run directly): checks TPU_NAME and ZONE, wraps gcloud.
#   tpu_vm SUBCOMMAND ARGS...  runs `gcloud compute tpus tpu-vm SUBCOMMAND ARGS... --zone=$ZONE [--project=$PROJECT]`
# shellcheck source-path=SCRIPTDIR source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

: "${TPU_NAME:?set TPU_NAME to the TPU VM name, e.g. TPU_NAME=rq-v4-32}"
: "${ZONE:?set ZONE to the TPU VM zone, e.g. ZONE=us-central2-b}"
: "${REMOTE_DIR:=rq_jax}"       # the repo's directory on every worker, relative to the home directory
: "${REMOTE_PYTHON:=python3}"   # the Python on the workers

# start_on_all_workers LOG CMD ARGS...  runs `CMD ARGS...` on every worker in ~/$REMOTE_DIR, in the background
#   (nohup), appending its output to ~/$REMOTE_DIR/logs/LOG.log; returns at once.
start_on_all_workers() {
  local log=$1 cmd dir
  shift
  printf -v cmd '%q ' "$@"
  printf -v dir '%q' "$REMOTE_DIR"
  tpu_vm ssh "$TPU_NAME" --worker=all \
    --command "cd $dir && mkdir -p logs && nohup ${cmd% } >> logs/$log.log 2>&1 < /dev/null &"
}

tpu_vm() {
  local where=(--zone="$ZONE")
  if [[ -n "${PROJECT:-}" ]]; then where+=(--project="$PROJECT"); fi
  run gcloud compute tpus tpu-vm "$@" "${where[@]}"
}
