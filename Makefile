# Each target creates .venv and installs the package on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TF_STAMP := $(VENV)/.installed-tf-stamp
# torch and torchvision pinned here (not in setup.cfg) to the builds this project is tested with.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast bench install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# the tf extra (TFRecord shards), for the tests only: the demo and the core package do without it
$(TF_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,tf]"
	touch $(TF_STAMP)

demo: $(STAMP)
	$(PY) -m ssl_rcc demo --out runs/demo --overwrite

test: $(STAMP) $(TF_STAMP)
	$(PY) -m pytest -q tests

# the edit-run loop: everything but the whole runs marked slow (make test, which CI runs, has them all)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(PY) -m benchmarks.kinetics_speed
	$(PY) -m benchmarks.phantoms_speed
	$(PY) -m benchmarks.pretrain_throughput
	$(PY) -m benchmarks.feature_speed

clean:
	rm -rf $(VENV) runs .pytest_cache
