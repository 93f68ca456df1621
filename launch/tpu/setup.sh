#!/usr/bin/env bash
# Put the repo on every worker of the TPU VM and install jax[tpu] and rq_jax there.
#
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b launch/tpu/setup.sh                                    # copy this checkout
#   TPU_NAME=rq-v4-32 ZONE=us-central2-b REPO_URL=https://github.com/you/rq_jax launch/tpu/setup.sh  # git clone
#
# Env: TPU_NAME, ZONE (required); REPO_URL (clone or pull it on the workers; default: copy this
#      checkout, without .git/.venv/workdirs, with scp); REMOTE_DIR (default rq_jax, under ~);
#      REMOTE_PYTHON (default python3); PROJECT; DRY_RUN=1 prints, runs nothing. Safe to re-run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

printf -v dir '%q' "$REMOTE_DIR"
pip="$REMOTE_PYTHON -m pip install -q"
install="cd $dir && $pip -U pip && $pip -U \"jax[tpu]\" && $pip -e ."

if [[ -n "${REPO_URL:-}" ]]; then
  echo "Cloning $REPO_URL into ~/$REMOTE_DIR on every worker of $TPU_NAME, then installing jax[tpu] and rq_jax"
  printf -v url '%q' "$REPO_URL"
  fetch="if [ -d $dir/.git ]; then git -C $dir pull --ff-only; else git clone $url $dir; fi"
  tpu_vm ssh "$TPU_NAME" --worker=all --command "$fetch && $install"
else
  repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  tarball="${TMPDIR:-/tmp}/rq_jax_src.tgz"
  echo "Copying $repo_root to ~/$REMOTE_DIR on every worker of $TPU_NAME, then installing jax[tpu] and rq_jax"
  run tar -czf "$tarball" -C "$repo_root" --exclude=./.git --exclude=./.venv --exclude=./workdirs \
    --exclude=./.pytest_data --exclude='*.egg-info' --exclude=__pycache__ .
  tpu_vm scp "$tarball" "$TPU_NAME:rq_jax_src.tgz" --worker=all
  tpu_vm ssh "$TPU_NAME" --worker=all --command "mkdir -p $dir && tar -xzf rq_jax_src.tgz -C $dir && $install"
fi
