"""Merge methods, one per file, behind one interface (base.MergeMethod), registered by name.

Every module of this package is imported here, so a method's file is all it takes to add one.
"""

import importlib
import pkgutil

from .base import METHODS, MergeMethod, merge_spec, method_class, register
from .linear import LinearMerge, group_weights, linear_merge
from .running import revolving_door, running_merges

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METHODS",
    "MergeMethod",
    "LinearMerge",
    "group_weights",
    "linear_merge",
    "merge_spec",
    "method_class",
    "register",
    "revolving_door",
    "running_merges",
]
