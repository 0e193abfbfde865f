"""mixlab: mixture-style deep generative models and classifiers (Lightning + Hydra)."""

__version__ = "0.1.0"
