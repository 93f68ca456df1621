#!/usr/bin/env bash
# Delete the TPU VM (its disks and logs go with it; gs:// workdirs stay). Asks first unless YES=1.
#
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b launch/tpu/delete.sh
#
# Env: TPU_NAME, ZONE (required); YES=1 skips the question; PROJECT; DRY_RUN=1 prints, runs nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

echo "Deleting TPU VM $TPU_NAME in $ZONE"
if [[ "${YES:-0}" == 0 ]] && ! is_dry_run; then
  read -r -p "Delete TPU VM $TPU_NAME? [y/N] " answer || answer=""
  [[ "$answer" == [yY]* ]] || die "$TPU_NAME not deleted (answer y, or set YES=1 to skip the question)."
fi
tpu_vm delete "$TPU_NAME" --quiet
