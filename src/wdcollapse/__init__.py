"""Neural collapse in networks trained with weight decay (Jacot et al., ICLR 2025)."""

__version__ = "0.1.0"
