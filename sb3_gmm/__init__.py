"""sb3_gmm: Gaussian-mixture policies for Stable-Baselines3."""
__version__ = "0.1.0"
