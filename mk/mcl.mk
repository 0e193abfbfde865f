# MCL diffusion (mixlab/mcl; tools in tools/mcl): every routing strategy, analysis figures, the step benchmark.
.PHONY: eval-mcl analyze bench-mcl

eval-mcl: weights classifier  ## every MCL routing strategy: make eval-mcl ckpt=PATH [gate_ckpt=PATH baseline_ckpt=PATH]
	@test -n "$(ckpt)" || { echo "error: ckpt: give an MCL checkpoint, e.g. make eval-mcl ckpt=logs/mcl_k4"; exit 2; }
	$(PY) evaluate.py strategy=all $(CLI_OVERRIDES) $(ARGS)

analyze: data  ## MCL analysis figures: make analyze ckpt=PATH [gate_ckpt=PATH baseline_ckpt=PATH]
	@test -n "$(ckpt)" || { echo "error: ckpt: give an MCL checkpoint, e.g. make analyze ckpt=logs/mcl_k4"; exit 2; }
	$(PY) evaluate.py evaluator=mcl_analysis $(CLI_OVERRIDES) $(ARGS)

bench-mcl: setup  ## one MCL training step vs the baseline's (dense loop / vmap, sparse hard WTA)
	$(PY) -m tools.mcl.bench $(ARGS)
