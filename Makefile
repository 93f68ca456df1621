# `make demo`, `make test` and `make lint` create (or reuse) .venv and run inside it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= workdirs/demo

.PHONY: test lint venv demo font sysdeps clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch only for the converter tests; the pinned CPU build avoids a multi-GB CUDA download
	$(BIN)/pip install -q 'torch==2.13.0' || echo "torch not installed: converter tests will be skipped"
	$(BIN)/pip install -q -e '.[test,convert]'
	# libtpu, the TPU compiler (213 MB download, 684 MB installed; no TPU needed), beside the venv rather than in it:
	# tests/aot compile for TPU slices with it on PYTHONPATH, and CPU runs never start a TPU backend. jax[tpu]'s pin.
	$(BIN)/pip install -q --no-deps --target $(VENV)/libtpu 'libtpu==0.0.42.*' || \
	  echo "libtpu not installed: the TPU compile tests will be skipped"
	# The CUDA plugin alone (183 MB, no CUDA libraries), beside the venv too: deviceless GPU compiles in tests/aot.
	$(BIN)/pip install -q --no-deps --target $(VENV)/cuda_plugin 'jax-cuda12-plugin==0.10.2' 'jax-cuda12-pjrt==0.10.2' || \
	  echo "jax CUDA plugin not installed: the GPU compile tests will be skipped"
	touch $(STAMP)

venv: $(STAMP)

# System packages (Debian/Ubuntu, as root; each optional): tcmalloc, which `python -m rq_jax.train` preloads
# (rq_jax/allocator.py: up to 2x faster CPU training steps), and the emoji font for the embedded dataset.
sysdeps: font
	@if [ ! -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] && [ ! -e /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 ] \
	  && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1) || \
	  echo "could not install libtcmalloc-minimal4: CPU training runs on glibc's malloc (slower)"; fi

# The emoji font for the embedded dataset; without it the digits are used.
font:
	@if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q fonts-noto-color-emoji libfribidi0 >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-noto-color-emoji libfribidi0 >/dev/null 2>&1) || \
	  echo "could not install fonts-noto-color-emoji: the demo will use the digits"; fi

# Two workers, each test file on one worker: the compile-bound suite took 19 min 24 s on 2 cores (22 min serially).
test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15 tests

lint: $(STAMP)
	$(BIN)/ruff check rq_jax tests benchmarks configs

# Stage 1, feature extraction, stage 2, then a class-conditional sample grid: $(DEMO_DIR)/samples.png
demo: $(STAMP) sysdeps
	$(BIN)/python -m rq_jax.train --config configs/rqvae/demo.py --workdir $(DEMO_DIR)/rqvae
	$(BIN)/python -m rq_jax.extract --rqvae $(DEMO_DIR)/rqvae --out $(DEMO_DIR)/features
	$(BIN)/python -m rq_jax.train --config configs/transformer/demo.py --workdir $(DEMO_DIR)/transformer \
	  --config.rqvae_workdir=$(DEMO_DIR)/rqvae --config.data.features_dir=$(DEMO_DIR)/features
	$(BIN)/python -m rq_jax.sample --workdir $(DEMO_DIR)/transformer --classes all --num 16 --out $(DEMO_DIR)/samples.png
	$(BIN)/python -m rq_jax.evaluate judge --samples $(DEMO_DIR)/samples.npz --data_config configs/rqvae/demo.py
	@if grep -q '"dataset": "emoji"' $(DEMO_DIR)/features/meta.json; then \
	  $(BIN)/python -m rq_jax.train --config configs/transformer/demo.py:text --workdir $(DEMO_DIR)/transformer_text \
	    --config.rqvae_workdir=$(DEMO_DIR)/rqvae --config.data.features_dir=$(DEMO_DIR)/features && \
	  $(BIN)/python -m rq_jax.sample --workdir $(DEMO_DIR)/transformer_text --num 8 --out $(DEMO_DIR)/samples_text.png \
	    --prompt "red apple" --prompt "police car" --prompt "grinning face" --prompt "dog face" && \
	  $(BIN)/python -m rq_jax.evaluate judge --samples $(DEMO_DIR)/samples_text.npz --data_config configs/rqvae/demo.py \
	    --classes 3,4,0,2; \
	else echo "text-conditional demo skipped: the digits have no names to prompt with"; fi

clean:
	rm -rf $(VENV) .pytest_cache .pytest_data
