"""Off-policy diffusion sampler tools: the paper table, validation curves, the benchmark, drawing samples,
the W2 reference rows."""
