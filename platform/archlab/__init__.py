"""archlab: train, tune, track and compare the classic deep-learning architectures."""

__version__ = "0.1.0"
