# Set-up and everyday commands. `make test` and `make demo` work on a fresh machine:
# each creates .venv and installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch; on a GPU machine run e.g. `make demo TORCH=torch` to keep your CUDA build.
TORCH  ?= torch==2.13.0
# torchvision is used by the parity tests only, installed without its dependencies so it never pulls
# a second (CUDA) torch.
TORCHVISION ?= torchvision==0.28.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install dev test test-fast demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install "$(TORCH)"
	$(PIP) install -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps "$(TORCHVISION)" || echo "torchvision not installed: its parity tests will be skipped"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

test: dev
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

test-fast: dev
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(BIN)/refine-cli refine examples/photos --out demo-out/photos --overwrite
	$(BIN)/refine-cli refine examples/camvid --base espnet_camvid --out demo-out/camvid --overwrite
	$(BIN)/refine-cli refine examples/photos --masks examples/photos_masks --out demo-out/photos_masks --overwrite
	$(BIN)/refine-cli refine examples/synth --base synth_fcn8s_compact --refiner synth_spn_universal_compact \
		--out demo-out/synth --overwrite
	@echo "Refined masks and overlays: demo-out/{photos,camvid,photos_masks,synth}/{masks,overlays}"

# The measurements the README cites, on this machine, as JSON (and the scaling plot) under benchmarks/results/;
# benchmarks/README.md lists each command and the GPU runs. The CRF baseline and the plot need the crf, plot extras.
bench: install
	$(PIP) install -e ".[crf,plot]"
	mkdir -p benchmarks/results
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/refine-cli bench pipeline --json benchmarks/results/pipeline.json
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/refine-cli bench refiner-vs-crf --json benchmarks/results/refiner_vs_crf.json
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/refine-cli bench scaling --json benchmarks/results/scaling.json \
		--plot benchmarks/results/scaling.png
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/refine-cli bench ops --refiner --json benchmarks/results/ops.json

clean:
	rm -rf $(VENV) demo-out .pytest_cache
