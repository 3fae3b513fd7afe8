# Two commands set up a fresh machine: `make quickstart` and `make test` (see README.md).
# Set-up steps leave stamps in .venv/.stamps so that a second run skips what is done.
#
# Your own environment instead of .venv (your torch, perhaps your own Detectron2 build):
#     make setup USE_PYTHON=/path/to/env/bin/python
# makes no venv and never installs or upgrades torch there (pip runs with PIP_CONSTRAINT pinning
# the torch and torchvision found); it installs the package into that environment, and the
# Detectron2 installer keeps a Detectron2 that works there. Every target takes the variable
# (`make test USE_PYTHON=...`); its stamps go to .cache/stamps/.
PYTHON ?= python3
USE_PYTHON ?=
VENV := .venv
ifeq ($(strip $(USE_PYTHON)),)
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
else
PY := $(strip $(USE_PYTHON))
STAMPS := .cache/stamps/$(subst /,_,$(PY))
endif
PIP := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=
OUTPUT ?= output/quickstart
DATA ?= datasets/synthetic_shapes

.PHONY: screenshot setup quickstart test test-fast stress demo benchmark gpu-check gpu-check-wheels browser clean

ifeq ($(strip $(USE_PYTHON)),)
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=64" wheel

# torch first, unpinned: pip takes the release this machine's index serves.
$(STAMPS)/torch: | $(PY)
	$(PIP) install --quiet torch torchvision
	mkdir -p $(STAMPS) && touch $@
else
# USE_PYTHON: torch is yours. Checked and pinned on every run (your torch may have changed since).
.PHONY: keep-torch
keep-torch:
	@command -v "$(PY)" >/dev/null 2>&1 || { echo "make: USE_PYTHON=$(USE_PYTHON) is not a" \
		"Python interpreter; give its path, e.g. USE_PYTHON=/path/to/env/bin/python" >&2; exit 1; }
	@mkdir -p $(STAMPS)
	@"$(PY)" -c "import importlib.metadata as m; print('\n'.join(f'{n}=={m.version(n)}' for n in ('torch', 'torchvision')))" \
		>$(STAMPS)/keep-torch.txt 2>/dev/null || { echo "make: $(PY) has no torch and" \
		"torchvision: install the build for your machine first" \
		"(https://pytorch.org/get-started/locally/); make never installs or upgrades torch in" \
		"your environment" >&2; exit 1; }
	@echo "make: using $(PY) as it is (no .venv); pip keeps" $$(cat $(STAMPS)/keep-torch.txt)

$(STAMPS)/torch: | keep-torch
	touch $@

$(STAMPS)/package: | keep-torch
$(STAMPS)/package: export PIP_CONSTRAINT = $(abspath $(STAMPS))/keep-torch.txt
endif

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

# Not part of `make test`: the SLURM join and the 2-process launcher, STRESS_REPEATS times each;
# every exit status must be 0, with no "terminate called" (tests/stress_distributed.py).
STRESS_REPEATS ?= 20
stress: setup
	$(PY) tests/stress_distributed.py --repeats $(STRESS_REPEATS)

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
		RESBACKBONES_UPDATE_README_SCREENSHOT=1 \
		$(PY) -m pytest tests/test_demo.py -k readme_screenshot -p no:cacheprovider
