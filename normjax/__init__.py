"""normjax: normalization layers and normalization-aware optimizers for JAX/Flax."""

__version__ = "0.1.0"
