"""Linear merge: a (weighted) parameter average, streamed block by block.

Floating-point tensors are averaged in float32 and cast back; other tensors
(integer buffers) must be equal in every model and are copied. Each block of
each input is read once (pread, into a small reused buffer) and added into a
cache-sized block of the output, so peak memory is the output model plus k
blocks, whatever k is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .io import SafetensorsReader, open_all

BLOCK = 1 << 20  # elements per block: few enough ops that thread start-up is amortized


def normalized(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"need {n} non-negative weights with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [w / total for w in weights]


def weighted_sum(readers: Sequence[SafetensorsReader], name: str, weights: Sequence[float], buffers: list[torch.Tensor]) -> torch.Tensor:
    """sum(w_i * tensor_i) in float32, block by block."""
    info = readers[0].tensors[name]
    out = torch.empty(info.numel, dtype=torch.float32)
    for start in range(0, info.numel, BLOCK):
        count = min(BLOCK, info.numel - start)
        block = out[start:start + count]
        torch.mul(readers[0].read(name, start, count, buffers[0]), weights[0], out=block)
        for r, w, buf in zip(readers[1:], weights[1:], buffers[1:]):
            block.add_(r.read(name, start, count, buf), alpha=w)
    return out.view(info.shape)


def linear_merge(paths: Sequence[Path | str], weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Average of the models in `paths`."""
    if not paths:
        raise ValueError("nothing to merge")
    w = normalized(weights, len(paths))
    out: dict[str, torch.Tensor] = {}
    with open_all(paths) as readers:
        widest = max(torch.empty(0, dtype=i.dtype).element_size() for i in readers[0].tensors.values())
        buffers = [torch.empty(BLOCK * widest, dtype=torch.uint8) for _ in readers]
        for name, info in readers[0].tensors.items():
            if not info.dtype.is_floating_point:
                first = readers[0].read(name).clone().view(info.shape)
                for p, r in zip(paths[1:], readers[1:]):
                    if not torch.equal(first, r.read(name).view(info.shape)):
                        raise ValueError(f"non-float tensor '{name}' differs in {p}")
                out[name] = first
                continue
            acc = weighted_sum(readers, name, w, buffers)
            out[name] = acc if info.dtype == torch.float32 else acc.to(info.dtype)
    return out
