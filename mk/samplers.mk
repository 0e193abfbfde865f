# Off-policy diffusion samplers (mixlab/samplers): the LGCP data, the W2 reference rows.
.PHONY: data-lgcp sampler-reference

data-lgcp: setup  ## Finnish pines for the LGCP energy -> data/finpines (Debian r-cran-spatstat.data, not installed)
	$(PY) -m mixlab.samplers.lgcp --root data

sampler-reference: setup  ## W2 between independent exact sample sets (25GMM, Funnel, Manywell-32) + mode-dropping controls
	$(PY) -m mixlab.samplers.metrics
