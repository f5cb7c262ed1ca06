# sam2-vitplug: every set-up step lives here, so a fresh machine needs only `make test` or `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
SAM2_PIN := sam2==1.1.0
STAMP := $(VENV)/.sam2-vitplug-installed
comma := ,
# pip, quiet, minus this machine's "Location ... is ignored" notes about its local indexes
PIP_INSTALL = set -o pipefail; $(PIP) install -q $(1) 2>&1 | { grep -v "is ignored: it is neither" || true; }
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-slow demo bench clean

# Re-run the install only when the manifest changed (fast no-op otherwise).
$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call PIP_INSTALL,--upgrade pip wheel "setuptools>=68")
	$(PY) -c "import torch, torchvision" 2>/dev/null || { $(call PIP_INSTALL,$(TORCH_PINS)); }
	$(PY) -c "import sam2" 2>/dev/null || { export SAM2_BUILD_CUDA=0; $(call PIP_INSTALL,--no-build-isolation $(SAM2_PIN)); }
	$(call PIP_INSTALL,-e ".[dev$(comma)train]")
	@# Meta's reference DINOv2 code, for the .pth conversion tests; it pins torch 2.0, hence --no-deps, last
	$(call PIP_INSTALL,--no-deps "dinov2==0.0.1.dev2")
	@touch $(STAMP)

setup: $(STAMP)

# Headless Chromium + its driver for the browser test (tests/test_app.py), from Debian, when missing
# and apt-get can run as root; otherwise that test skips and says why. Stamped only once both are there.
BROWSER_STAMP := $(VENV)/.chromium-ready
$(BROWSER_STAMP): | $(STAMP)
	@if ! { command -v chromium && command -v chromedriver; } >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium and chromium-driver for tests/test_app.py"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	      || echo "warning: chromium could not be installed; the browser test will skip"; \
	  else echo "note: no chromium/chromedriver and no root apt-get; the browser test will skip"; fi; \
	fi
	@if { command -v chromium && command -v chromedriver; } >/dev/null; then touch $@; fi

test: $(STAMP) $(BROWSER_STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) tools/demo_fewshot.py --out demo_out
	@echo "the few-shot page on these images: $(VENV)/bin/sam2-vitplug app --images demo_out/data/val/images --sam2-config sam2_vit_demo --encoder dinov2_demo, then open http://127.0.0.1:7860/"

bench: $(STAMP)
	$(PY) tools/bench_trunk.py --out bench_out/bench_trunk.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache bench_out demo_out
