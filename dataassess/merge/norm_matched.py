"""Norm-matched average: the weighted mean of the unit models' updates, stretched per tensor back to their mean length.

    delta_i = model_i - base,  w normalized to sum to 1
    merged  = base + (sum_i w_i * |delta_i|) / |sum_i w_i * delta_i| * sum_i w_i * delta_i      (per tensor, L2 norms)

Why: AdamW sets each parameter's step by the learning rate, not by the gradient's size, so a model trained
for the same steps on a mixture of the units' data moves about as far from the seed as each unit model did.
The plain average of k updates that point different ways is shorter than any of them; this keeps its
direction and restores the length. One unit (or identical updates) gives the linear average back.
Reads tensor by tensor (updates.merge_updates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .base import MergeMethod, register
from .linear import normalized
from .updates import merge_updates


def stretched_mean(deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean of the rows of `deltas`, scaled to the weighted mean of their L2 norms."""
    mean = (weights[:, None] * deltas).sum(0)
    length = mean.norm()
    if length == 0:
        return mean
    return mean * ((weights * deltas.norm(dim=1)).sum() / length)


@register
class NormMatched(MergeMethod):
    name = "norm_matched"
    uses_base = True

    def merge(
        self,
        paths: Sequence[Path | str],
        weights: Sequence[float] | None = None,
        out: dict[str, torch.Tensor] | None = None,
        *,
        base: Path | str | None = None,
        params: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        if not paths:
            raise ValueError("nothing to merge")
        w = torch.tensor(normalized(weights, len(paths)), dtype=torch.float32)
        return merge_updates(self.name, paths, base, out, lambda updates: stretched_mean(updates, w))
