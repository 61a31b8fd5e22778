"""Merge methods, one per file."""
from .linear import linear_merge
from .macro import macro_merge, macro_weights
from .running import revolving_door, running_merges

__all__ = ["linear_merge", "macro_merge", "macro_weights", "revolving_door", "running_merges"]
