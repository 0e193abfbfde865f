"""SEDD tools: the training and sampling throughput benchmark."""
