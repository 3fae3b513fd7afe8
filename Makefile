# Two commands set up a fresh machine: `make quickstart` and `make test` (see README.md).
# Set-up steps leave stamps in .venv/.stamps so that a second run skips what is done.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMPS := $(VENV)/.stamps
PYTEST_ARGS ?=
OUTPUT ?= output/quickstart
DATA ?= datasets/synthetic_shapes

.PHONY: screenshot setup quickstart test test-fast demo benchmark gpu-check gpu-check-wheels browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=64" wheel

# torch first, unpinned: pip takes the release this machine's index serves.
$(STAMPS)/torch: | $(PY)
	$(PIP) install --quiet torch torchvision
	mkdir -p $(STAMPS) && touch $@

$(STAMPS)/package: setup.cfg pyproject.toml $(STAMPS)/torch
	$(PIP) install --quiet -e ".[all,test]"
	touch $@

# Always run: the installer itself is idempotent and says what it found.
setup: $(STAMPS)/package
	$(PY) tools/install_detectron2.py
	$(PY) -m resbackbones.env

# Debian's Chromium for the browser tests (Playwright drives the system browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

quickstart: setup
	$(PY) tools/quickstart.py --data $(DATA) --output $(OUTPUT)

test: setup browser
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(PY) tools/gradio_demo.py --config-file $(OUTPUT)/config.yaml --confidence-threshold 0.25 \
		--opts MODEL.WEIGHTS $(OUTPUT)/model_final.pth

benchmark: setup
	$(PY) tools/benchmark.py

# One-shot GPU check (tools/gpu_check.py), on a CUDA machine: one summary table in < 8 minutes.
gpu-check: setup
	$(PY) tools/gpu_check.py --out output/gpu_check

# The wheels a bare lent GPU machine needs to run the check (see tools/gpu_check.py's docstring).
gpu-check-wheels: setup
	$(PY) tools/gpu_check.py --prepare-wheels .whl

clean:
	rm -rf $(VENV) .cache build *.egg-info

# docs/demo.png from a real run: the web demo serving the quickstart's model in Chromium.
screenshot: setup browser
	RESBACKBONES_README_MODEL=$(OUTPUT) RESBACKBONES_README_IMAGES=$(DATA)/val \
		$(PY) -m pytest tests/test_demo.py -k readme_screenshot -p no:cacheprovider
