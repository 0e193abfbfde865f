"""MCL diffusion tools: the training-step benchmark and the analysis figures."""
