"""Merge methods, one per file, behind one interface (base.MergeMethod)."""

from .base import MergeMethod
from .group import GroupMerge, group_weights
from .linear import LinearMerge, linear_merge
from .running import revolving_door, running_merges

__all__ = [
    "MergeMethod",
    "GroupMerge",
    "LinearMerge",
    "group_weights",
    "linear_merge",
    "revolving_door",
    "running_merges",
]
