"""Macro merge: an average of per-group averages (e.g. per-partition merges).

Computed in one streamed pass with the equivalent per-model weights; any
already-merged file can also be passed to linear_merge directly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .linear import linear_merge, normalized


def macro_weights(groups: Sequence[Sequence[float]], group_weights: Sequence[float] | None = None) -> list[float]:
    """Flattened weights: each group's inner weights scaled by its group weight."""
    gw = normalized(group_weights, len(groups))
    return [g * w for g, inner in zip(gw, groups) for w in normalized(list(inner), len(inner))]


def macro_merge(
    groups: Sequence[Sequence[Path | str]], group_weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    paths = [p for g in groups for p in g]
    return linear_merge(paths, macro_weights([[1.0] * len(g) for g in groups], group_weights))
