#!/usr/bin/env bash
# Wheels for running benchmarks/device_check.py on a lent GPU machine whose image has no network.
#
#   bash benchmarks/device_wheels.sh            # here (needs the package registry): fills .device_wheels/
#
# The device image (see the device tool's KINDS.md) holds jax with CUDA, flax, optax, orbax, pillow,
# cloudpickle, absl-py, etils, protobuf and pyyaml under Python 3.12, but not these four, which rq_jax
# imports on device_check's paths. Then carry the folder and install it there, in one device run:
#
#   carry: [".device_wheels"]
#   command: python3 -m pip install -q --no-index --no-deps .device_wheels/*.whl && \
#            python3 -m benchmarks.device_check --out $OUT/device_check.md
#
# PYTHON_VERSION / PLATFORM override the target (defaults: 3.12, manylinux x86_64).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON_VERSION:-3.12}"
platform="${PLATFORM:-manylinux2014_x86_64}"
mkdir -p .device_wheels
# grain and array-record ship compiled code; the other two are pure Python.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --platform "$platform" \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
  --dest .device_wheels grain array-record ml-collections portpicker
ls -l .device_wheels
du -sh .device_wheels
