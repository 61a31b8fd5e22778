"""Merge methods, one per file."""
from .linear import linear_merge
from .macro import macro_merge, macro_weights

__all__ = ["linear_merge", "macro_merge", "macro_weights"]
