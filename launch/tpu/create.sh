#!/usr/bin/env bash
# Create a TPU VM: one host (v4-8, v5litepod-8, ...) or a pod slice of several (v4-32, v5litepod-64, ...).
#
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 launch/tpu/create.sh
#
# Env: TPU_NAME, ZONE, ACCELERATOR_TYPE (required); RUNTIME_VERSION (default: the JAX base image of
#      the TPU generation); PROJECT (default: gcloud's); SPOT=1 for a spot VM (cheaper, can be
#      preempted: re-create it and re-run run.sh, training resumes); DRY_RUN=1 prints, runs nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE to the slice type, e.g. ACCELERATOR_TYPE=v4-32 or v5litepod-64}"

case "$ACCELERATOR_TYPE" in
  v6e-*) default_version=v2-alpha-tpuv6e ;;
  v5p-*) default_version=v2-alpha-tpuv5 ;;
  v5litepod-* | v5e-*) default_version=v2-alpha-tpuv5-lite ;;
  *) default_version=tpu-ubuntu2204-base ;;  # v4 and older
esac
RUNTIME_VERSION=${RUNTIME_VERSION:-$default_version}
flags=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
kind="on-demand"
if [[ "${SPOT:-0}" != 0 ]]; then flags+=(--spot); kind="spot"; fi

echo "Creating $kind TPU VM $TPU_NAME ($ACCELERATOR_TYPE, runtime $RUNTIME_VERSION) in $ZONE"
tpu_vm create "$TPU_NAME" "${flags[@]}"
