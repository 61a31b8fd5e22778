"""Linear merge: a (weighted) parameter average, streamed tensor by tensor.

Floating-point tensors are averaged in float32 and cast back; other tensors
(integer buffers) must be equal in every model and are copied.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .io import open_all


def normalized(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"need {n} non-negative weights with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [w / total for w in weights]


def linear_merge(paths: Sequence[Path | str], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Average of the models in `paths`; peak memory is one model plus one tensor."""
    if not paths:
        raise ValueError("nothing to merge")
    w = normalized(weights, len(paths))
    out: dict[str, torch.Tensor] = {}
    with open_all(paths) as handles:
        for key in handles[0].keys():
            first = handles[0].get_tensor(key)
            if not first.is_floating_point():
                for p, h in zip(paths[1:], handles[1:]):
                    if not torch.equal(first, h.get_tensor(key)):
                        raise ValueError(f"non-float tensor '{key}' differs in {p}")
                out[key] = first
                continue
            acc = first.to(torch.float32).mul_(w[0])
            for wi, h in zip(w[1:], handles[1:]):
                acc.add_(h.get_tensor(key).to(torch.float32), alpha=wi)
            out[key] = acc.to(first.dtype)
    return out
