"""Building blocks of the distillation heads."""

from famkd.nn.cross_attention import CrossAttention

__all__ = ["CrossAttention"]
