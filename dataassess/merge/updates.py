"""What the methods that merge updates share: each tensor read from the seed and every model, the models' updates
(model - seed) stacked as rows, and the seed plus the method's combination of them written back.

Reads tensor by tensor (k + 1 copies of the largest tensor in memory); non-float tensors are the seed's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .base import base_required, into
from .io import open_all
from .linear import check_covers


def merge_updates(
    method: str,
    paths: Sequence[Path | str],
    base: Path | str | None,
    out: dict[str, torch.Tensor] | None,
    combine: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """seed + combine(updates) per tensor, where updates is (k, numel) in float32; into `out` when given."""
    merged: dict[str, torch.Tensor] = {}
    with open_all([base_required(method, base), *paths]) as readers:
        if out is not None:
            check_covers(out, set(readers[0].tensors))
        for name, info in readers[0].tensors.items():
            seed = readers[0].read(name).view(info.shape)
            if not info.dtype.is_floating_point:
                merged[name] = seed
                continue
            seed32 = seed.float().reshape(1, -1)
            updates = torch.cat([r.read(name).float().reshape(1, -1) - seed32 for r in readers[1:]])
            merged[name] = (seed32[0] + combine(updates)).to(info.dtype).view(info.shape)
    return into(out, merged)
