"""Group merge: an average of per-group averages (e.g. one average per partition).

Computed in one streamed pass with the equivalent per-model weights; any
already-merged file can also be passed to a linear merge directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .base import MergeMethod
from .linear import LinearMerge, normalized


def group_weights(groups: Sequence[Sequence[float]], weights_of_groups: Sequence[float] | None = None) -> list[float]:
    """Flattened per-model weights: each group's inner weights scaled by its group weight."""
    gw = normalized(weights_of_groups, len(groups))
    return [g * w for g, inner in zip(gw, groups) for w in normalized(list(inner), len(inner))]


class GroupMerge(MergeMethod):
    """merge([[a, b], [c]]): (a + b) / 2 and c, averaged (with optional group weights)."""

    def __init__(self, linear: LinearMerge | None = None):
        self.linear = linear or LinearMerge()

    def merge(
        self,
        groups: Sequence[Sequence[Path | str]],
        weights: Sequence[float] | None = None,
        out: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        paths = [p for g in groups for p in g]
        return self.linear.merge(paths, group_weights([[1.0] * len(g) for g in groups], weights), out)

    def close(self) -> None:
        self.linear.close()
