# Off-policy diffusion samplers (mixlab/samplers; tools in tools/samplers): the LGCP data, the W2 reference rows, the paper table, the benchmark.
.PHONY: data-lgcp sampler-reference

data-lgcp: setup  ## Finnish pines for the LGCP energy -> data/finpines (Debian r-cran-spatstat.data, not installed)
	$(PY) -m tools.data.lgcp --root data

sampler-reference: setup  ## W2 between independent exact sample sets (25GMM, Funnel, Manywell-32) + mode-dropping controls (ARGS="--n 2000 --seeds 5")
	$(PY) -m tools.samplers.reference $(ARGS)

# Paper table, benchmark. SEEDS / ITERS are make-only (not passed to train.py as overrides).
MAKE_ONLY += SEEDS ITERS
SEEDS ?= 3
ITERS ?=
.PHONY: table-samplers bench-samplers

table-samplers: setup  ## Table 1 rows (25GMM x4, Manywell-32 x3), SEEDS=3 seeds [ITERS=N], mean ± std vs the paper, Welch test: make table-samplers ARGS="trainer=gpu"
	$(PY) -m tools.samplers.table --seeds $(SEEDS) --iters '$(ITERS)' -- $(ARGS)

bench-samplers: setup  ## seconds per sampler iteration on Manywell d=8/32/128/512 vs straightforward loops (ARGS="--compile --steps 10")
	$(PY) -m tools.samplers.bench $(ARGS)

# Side by side with the reference code (GFNOrg/gfn-diffusion): REF = its checkout (needs einops, matplotlib).
MAKE_ONLY += REF
REF ?=
.PHONY: bench-samplers-reference compare-samplers
CHECK_REF = @test -n "$(REF)" || { echo "error: REF: give a GFNOrg/gfn-diffusion checkout, e.g. make $@ REF=../gfn-diffusion"; exit 2; }

bench-samplers-reference: setup  ## seconds per iteration, mixlab vs the reference code interleaved: make bench-samplers-reference REF=CHECKOUT [ARGS="--rows tb_manywell"]
	$(CHECK_REF)
	$(PY) -m tools.samplers.versus_reference --reference $(REF) $(ARGS)

compare-samplers: setup  ## equal-budget learning curves, 25GMM TB + Expl. + LS: reference vs mixlab (vs mixlab with its settings): make compare-samplers REF=CHECKOUT [ARGS="--seeds 0 --iterations 500 --json x.json --figure x.png"]
	$(CHECK_REF)
	$(PY) -m tools.samplers.equal_budget --reference $(REF) $(ARGS)
