"""VE score diffusion tools: the training-throughput benchmark."""
