"""Task arithmetic (Ilharco et al. 2023): the seed plus the scaled, weighted sum of the unit models' updates.

    merged = base + scale * sum_i (k * w_i) * (model_i - base),  w normalized to sum to 1

With uniform weights and scale 1 it is the seed plus every unit's update: the first-order proxy of
training on the whole union of the units (k x the tokens); scale 1/k gives back the linear average.
It is linear in its inputs, so it streams like the linear merge, with the seed as one more input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .base import MergeMethod, base_required, register
from .linear import LinearMerge, normalized


def coefficients(k: int, weights: Sequence[float] | None, scale: float) -> list[float]:
    """The coefficients of (base, model_1, ..., model_k) in the merged model."""
    c = [scale * k * w for w in normalized(weights, k)]
    return [1.0 - sum(c), *c]


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    parameters = {"scale": 1.0}
    uses_base = True

    def __init__(self) -> None:
        self.linear = LinearMerge()

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
        c = coefficients(len(paths), weights, self.resolved(params)["scale"])
        return self.linear.weighted_sum([base_required(self.name, base), *paths], c, out)

    def close(self) -> None:
        self.linear.close()
