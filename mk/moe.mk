# Multi-task MoE classifier (mixlab/moe): stand-in data, the sub-models -> MoE pipeline, evaluation.
TASK ?= a
MOE_ARGS ?= data/source=standin
MAKE_ONLY += TASK MOE_ARGS
.PHONY: data-moe pretrain-moe eval-moe

data-moe: data data-fashion  ## offline stand-in for the MoE tasks (MNIST + Fashion-MNIST; real: data/source=cifar100|imagefolder)

pretrain-moe: data-moe  ## 3 per-subset CNNs, then the MoE of task TASK=a|b initialised from them (MOE_ARGS="data/source=standin ...")
	@set -e; dir=logs/moe_pipeline_task_$(TASK)/$$(date +%Y-%m-%d_%H-%M-%S); \
	  for s in 1 2 3; do \
	    $(PY) train.py experiment=pretrain_task_$(TASK) data.subset=$$s $(MOE_ARGS) $(ARGS) hydra.run.dir=$$dir/pretrain_$$s; \
	  done; \
	  $(PY) train.py experiment=moe_task_$(TASK) "model.init_from=[$$dir/pretrain_1,$$dir/pretrain_2,$$dir/pretrain_3]" $(MOE_ARGS) $(ARGS) hydra.run.dir=$$dir/moe; \
	  $(PY) evaluate.py ckpt=$$dir/moe

eval-moe: setup  ## accuracy table, confusion matrix, sample predictions of a classifier checkpoint (= make eval)
	@test -n "$(ckpt)" || { echo "error: ckpt: give the checkpoint, e.g. make eval-moe ckpt=logs/moe_task_a"; exit 2; }
	$(PY) evaluate.py $(CLI_OVERRIDES) $(ARGS)
