"""famkd: knowledge distillation with Frequency Attention (FAM-KD) and its baselines."""

__version__ = "0.1.0"
