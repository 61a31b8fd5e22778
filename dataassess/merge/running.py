"""Running merge: uniform averages of every k-subset, one add and one subtract per step.

Subsets come in revolving-door order (Knuth 7.2.1.3): consecutive subsets differ by one
model out and one in, so the running sum moves by two model reads, and each merged model
costs O(model) whatever k is, against O(k * model) for merging each subset from scratch.
The float32 sum is recomputed from scratch every `refresh` steps to bound rounding drift.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .io import open_all
from .linear import LinearMerge, flat_layout, read_flat


def revolving_door(n: int, k: int) -> list[tuple[int, ...]]:
    """Every k-subset of range(n), each differing from the previous by one swap."""
    if k == 0:
        return [()]
    if k > n:
        return []
    if k == n:
        return [tuple(range(n))]
    return revolving_door(n - 1, k) + [c + (n - 1,) for c in reversed(revolving_door(n - 1, k - 1))]


def running_merges(
    paths: Sequence[Path | str],
    k: int,
    refresh: int = 32,
    out: dict[str, torch.Tensor] | None = None,
    linear: LinearMerge | None = None,
) -> Iterator[tuple[tuple[int, ...], dict[str, torch.Tensor]]]:
    """Yield (subset, merged state) for every k-subset of `paths` in revolving-door order.

    The yielded state is rewritten in place at the next step (or written into `out`):
    use or copy it before advancing. Needs every tensor of one float dtype (flat layout).
    `linear` sums the refreshes and sets the block size (default: a LinearMerge of its own).
    """
    subsets = revolving_door(len(paths), k)
    own = linear is None
    linear = linear or LinearMerge()
    step_size = linear.block
    try:
        yield from _running(paths, k, refresh, out, linear, step_size, subsets)
    finally:
        if own:
            linear.close()


def _running(paths, k, refresh, out, linear: LinearMerge, step_size: int, subsets):
    with open_all(paths) as readers:
        layout = flat_layout(readers)
        if layout is None:
            raise ValueError("running merges need models whose tensors share one float dtype")
        total = layout.numel
        running = torch.empty(total, dtype=torch.float32)
        merged = layout.views(torch.empty(total, dtype=layout.dtype)) if out is None else out
        targets = layout.segments(merged)
        buf_a, buf_b = (torch.empty(min(step_size, total) * layout.itemsize, dtype=torch.uint8) for _ in range(2))
        previous: tuple[int, ...] | None = None
        for step, subset in enumerate(subsets):
            if previous is None or step % refresh == 0:  # the plain sum, from scratch
                linear.flat_weighted_sum(
                    [readers[i] for i in subset], layout, [1.0] * k, [(0, total, running)], direct=True
                )
            else:
                (add,) = set(subset) - set(previous)
                (sub,) = set(previous) - set(subset)
                for start in range(0, total, step_size):
                    count = min(step_size, total - start)
                    block = running[start : start + count]
                    block.add_(read_flat(readers[add], layout, start, count, buf_a))
                    block.sub_(read_flat(readers[sub], layout, start, count, buf_b))
            for start, count, target in targets:
                if target.dtype == torch.float32:
                    torch.mul(running[start : start + count], 1.0 / k, out=target)
                else:
                    target.copy_(running[start : start + count] / k)
            previous = subset
            yield subset, merged
