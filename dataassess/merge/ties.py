"""TIES merging (Yadav et al. 2023): trim each unit model's update to its largest entries, elect a sign per
parameter, and average only the updates that agree with it.

    delta_i  = model_i - base, keeping per tensor the top `density` fraction of |delta_i| (the rest 0)
    sign     = sign(sum_i w_i * delta_i)
    merged   = base + scale * sum_i w_i * delta_i * agree_i / sum_i w_i * agree_i,  agree_i = (sign(delta_i) == sign)

Reads tensor by tensor (updates.merge_updates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..errors import UserError
from .base import MergeMethod, register
from .linear import normalized
from .updates import merge_updates


def trim(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """Each row (one model's update, flattened) with all but its top `density` fraction by magnitude set to 0."""
    n = deltas.shape[1]
    keep = max(1, math.ceil(density * n))
    if keep >= n:
        return deltas
    threshold = deltas.abs().kthvalue(n - keep + 1, dim=1, keepdim=True).values
    return torch.where(deltas.abs() >= threshold, deltas, torch.zeros_like(deltas))


def disjoint_mean(deltas: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The weighted mean, per parameter, of the updates whose sign agrees with the elected (weighted-sum) sign."""
    w = weights[:, None]
    elected = torch.sign((w * deltas).sum(0))
    agree = (torch.sign(deltas) == elected) & (deltas != 0)
    total = (w * agree).sum(0)
    return torch.where(total > 0, (w * deltas * agree).sum(0) / total.clamp_min(1e-30), torch.zeros_like(total))


@register
class Ties(MergeMethod):
    name = "ties"
    parameters = {"density": 0.2, "scale": 1.0}
    uses_base = True

    @classmethod
    def check(cls, params: Mapping[str, float]) -> None:
        if not 0 < params["density"] <= 1:
            raise UserError(f"merge method 'ties': density must be in (0, 1], not {params['density']:g}")

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
        p = self.resolved(params)
        self.check(p)
        w = torch.tensor(normalized(weights, len(paths)), dtype=torch.float32)
        return merge_updates(
            self.name, paths, base, out, lambda updates: p["scale"] * disjoint_mean(trim(updates, p["density"]), w)
        )
