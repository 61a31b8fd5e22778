"""Linear merge: a (weighted) parameter average, streamed tensor by tensor.

Floating-point tensors are averaged in float32 and cast back; other tensors
(integer buffers) must be equal in every model and are copied. Inputs are
memory-mapped and only read; the sum is built in cache-sized blocks of a fresh
buffer, so each input byte is read once and each output byte written once.
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


BLOCK = 1 << 16  # elements per block: the float32 accumulator block stays in L2 cache


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum(w_i * t_i) in float32, blockwise."""
    out = torch.empty(tensors[0].shape, dtype=torch.float32)
    flat_out, flats = out.view(-1), [t.reshape(-1) for t in tensors]
    for start in range(0, flat_out.numel(), BLOCK):
        block = flat_out[start:start + BLOCK]
        torch.mul(flats[0][start:start + BLOCK], weights[0], out=block)
        for flat, w in zip(flats[1:], weights[1:]):
            block.add_(flat[start:start + BLOCK], alpha=w)
    return out


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
            acc = weighted_sum([first] + [h.get_tensor(key) for h in handles[1:]], w)
            out[key] = acc if first.dtype == torch.float32 else acc.to(first.dtype)
    return out
