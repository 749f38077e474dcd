"""vitlab: a config-driven experiment framework for efficient Vision Transformers."""

__version__ = "0.1.0"
