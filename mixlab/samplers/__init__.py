"""Off-policy diffusion samplers for unnormalised densities (Sendera et al., NeurIPS 2024)."""
