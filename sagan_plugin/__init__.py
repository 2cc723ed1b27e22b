"""SAGAN (Self-Attention GAN) as a model family for torch-mimicry."""

__version__ = "0.1.0"
