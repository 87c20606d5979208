"""alol: offline reinforcement learning for language models (A-LoL and its baselines)."""

__version__ = "0.1.0"
