"""Linear merge: a (weighted) parameter average, streamed block by block.

Floating-point tensors are averaged in float32 and cast back; other tensors
(integer buffers) must be equal in every model and are copied. Each block of
each input is read once (pread, into a small reused buffer) and added into a
cache-sized block of the output, so peak memory is the output model plus k
blocks, whatever k is.

When every input has the same header layout and one float dtype (what a unit
model always is), the data sections are merged as one flat array: a few large
blocks instead of many small tensors, and the output tensors are views of one buffer.

A LinearMerge owns its worker threads and read buffers: keep one open across many merges
(fresh buffers would page-fault on every call) and close it when done.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import MergeMethod, into, register
from .io import SafetensorsReader, open_all

BLOCK = 1 << 18  # elements per block: k read buffers stay in cache, few enough ops to amortize their overhead


def normalized(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"need {n} non-negative weights with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [w / total for w in weights]


@dataclass(frozen=True)
class FlatLayout:
    """Where each tensor sits in the flat data section, in elements."""

    dtype: torch.dtype
    names: tuple[str, ...]
    offsets: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    numel: int

    @property
    def itemsize(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: flat[o : o + _numel(s)].view(s) for n, o, s in zip(self.names, self.offsets, self.shapes)}

    def segments(self, state: dict[str, torch.Tensor]) -> list[tuple[int, int, torch.Tensor]]:
        """(flat offset, numel, flat view of state[name]) for each tensor, in layout order."""
        out = []
        for n, o, s in zip(self.names, self.offsets, self.shapes):
            if tuple(state[n].shape) != s:
                raise ValueError(f"output tensor '{n}' has shape {tuple(state[n].shape)}, the models {s}")
            out.append((o, _numel(s), state[n].view(-1)))
        return out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def flat_layout(readers: Sequence[SafetensorsReader]) -> FlatLayout | None:
    """The shared flat layout of the inputs, or None when they differ or mix dtypes."""
    first = readers[0]
    infos = sorted(first.tensors.items(), key=lambda kv: kv[1].offset)
    if not infos or len({i.dtype for _, i in infos}) != 1 or not infos[0][1].dtype.is_floating_point:
        return None
    dtype = infos[0][1].dtype
    item = torch.empty(0, dtype=dtype).element_size()
    offsets, expected = [], 0
    for _, info in infos:
        rel = info.offset - first.data_start
        if rel != expected * item:  # a gap or overlap: not a plain flat section
            return None
        offsets.append(expected)
        expected += info.numel
    for r in readers[1:]:  # names, shapes and dtypes were checked by open_all
        if any(r.tensors[n].offset - r.data_start != i.offset - first.data_start for n, i in infos):
            return None
    return FlatLayout(dtype, tuple(n for n, _ in infos), tuple(offsets), tuple(i.shape for _, i in infos), expected)


def read_flat(
    reader: SafetensorsReader, layout: FlatLayout, start: int, count: int, buffer: torch.Tensor
) -> torch.Tensor:
    """Elements [start, start + count) of a reader's flat data section."""
    item = layout.itemsize
    return reader.read_raw(reader.data_start + start * item, count * item, buffer).view(layout.dtype)


def scaled_into(acc: torch.Tensor, x: torch.Tensor, w: float) -> None:
    """acc = w * x in float32 (a half-precision x times a scalar would round in half precision)."""
    if x.dtype == torch.float32:
        torch.mul(x, w, out=acc)
    else:
        acc.copy_(x).mul_(w)


def check_covers(out: dict[str, torch.Tensor], names: set[str]) -> None:
    """Every tensor of `out` is in `names` or tied to (shares storage with) one that is; no extra names."""
    if extra := sorted(names - set(out)):
        raise ValueError(f"weights have keys the model lacks: {extra[:5]}")
    present = {out[n].data_ptr() for n in names}
    if lacking := sorted(n for n in set(out) - names if out[n].data_ptr() not in present):
        raise ValueError(f"weights lack {lacking[:5]}, which are not tied to a loaded tensor")


def group_weights(groups: Sequence[Sequence[float]], weights_of_groups: Sequence[float] | None = None) -> list[float]:
    """Flattened per-model weights of an average of per-group averages: each group's inner weights scaled by its
    group weight (e.g. one average per partition, then their average)."""
    gw = normalized(weights_of_groups, len(groups))
    return [g * w for g, inner in zip(gw, groups) for w in normalized(list(inner), len(inner))]


@register
class LinearMerge(MergeMethod):
    """sum(w_i * model_i) / sum(w): the (weighted) parameter average, streamed in blocks of `block` elements
    over `workers` threads. Uniform, token-weighted or share-weighted by the mixture's weights."""

    name = "linear"

    def __init__(self, block: int = BLOCK, workers: int | None = None):
        self.block = block
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._executor: ThreadPoolExecutor | None = None
        self._buffers: dict[int, list[torch.Tensor]] = {}  # per range index: k read buffers, reused

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        self._buffers.clear()

    def merge(
        self,
        paths: Sequence[Path | str],
        weights: Sequence[float] | None = None,
        out: dict[str, torch.Tensor] | None = None,
        *,
        base: Path | str | None = None,
        params: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Average of the models in `paths`; written into `out` (e.g. a model's parameters) if given."""
        if not paths:
            raise ValueError("nothing to merge")
        return self.weighted_sum(paths, normalized(weights, len(paths)), out)

    def weighted_sum(
        self, paths: Sequence[Path | str], coefficients: Sequence[float], out: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """sum(c_i * model_i) with the coefficients as given (any sign, any sum)."""
        w = [float(c) for c in coefficients]
        with open_all(paths) as readers:
            if out is not None:
                check_covers(out, set(readers[0].tensors))
            layout = flat_layout(readers)
            if layout is not None:
                return self._merge_flat(readers, layout, w, out)
            merged = self._merge_tensors(paths, readers, w)
        return into(out, merged)

    def _merge_flat(self, readers, layout: FlatLayout, w: list[float], out) -> dict[str, torch.Tensor]:
        if out is None:
            flat = torch.empty(layout.numel, dtype=layout.dtype)
            self.flat_weighted_sum(readers, layout, w, [(0, layout.numel, flat)], direct=layout.dtype == torch.float32)
            return layout.views(flat)
        self.flat_weighted_sum(readers, layout, w, layout.segments(out), direct=False)
        return out

    def _merge_tensors(self, paths, readers, w: list[float]) -> dict[str, torch.Tensor]:
        """Tensor by tensor: mixed dtypes or layouts. Non-float tensors must be equal and are copied."""
        merged: dict[str, torch.Tensor] = {}
        widest = max(torch.empty(0, dtype=i.dtype).element_size() for i in readers[0].tensors.values())
        buffers = self.buffers(0, len(readers), self.block * widest)
        for name, info in readers[0].tensors.items():
            if not info.dtype.is_floating_point:
                first = readers[0].read(name).clone().view(info.shape)
                for p, r in zip(paths[1:], readers[1:]):
                    if not torch.equal(first, r.read(name).view(info.shape)):
                        raise ValueError(f"non-float tensor '{name}' differs in {p}")
                merged[name] = first
                continue
            acc = torch.empty(info.numel, dtype=torch.float32)
            for start in range(0, info.numel, self.block):
                count = min(self.block, info.numel - start)
                block = acc[start : start + count]
                scaled_into(block, readers[0].read(name, start, count, buffers[0]), w[0])
                for r, wi, buf in zip(readers[1:], w[1:], buffers[1:]):
                    block.add_(r.read(name, start, count, buf), alpha=wi)
            merged[name] = (acc if info.dtype == torch.float32 else acc.to(info.dtype)).view(info.shape)
        return merged

    def buffers(self, slot: int, k: int, nbytes: int) -> list[torch.Tensor]:
        """k read buffers of at least `nbytes` for one worker range, reused across merges."""
        bufs = self._buffers.setdefault(slot, [])
        for i in range(k):
            if i == len(bufs):
                bufs.append(torch.empty(0, dtype=torch.uint8))
            if bufs[i].numel() < nbytes:
                bufs[i] = torch.empty(nbytes, dtype=torch.uint8)
        return bufs[:k]

    def flat_weighted_sum(
        self,
        readers: Sequence[SafetensorsReader],
        layout: FlatLayout,
        weights: Sequence[float],
        segments: list[tuple[int, int, torch.Tensor]],
        direct: bool,
    ) -> None:
        """Write sum(w_i * model_i) into `segments`. With `direct`, the single segment is a float32
        flat buffer accumulated into in place; otherwise blocks go through a float32 scratch.

        Large models are cut into one contiguous range per worker thread: pread and the torch
        ops release the GIL, so the kernel's page-cache copies run on every core.
        """
        n = layout.numel
        workers = max(1, min(self.workers, n // (4 * self.block)))
        bounds = [n * i // workers // self.block * self.block for i in range(workers)] + [n]
        ranges = list(enumerate(zip(bounds, bounds[1:])))
        if workers == 1:
            self._sum_range(readers, layout, weights, segments, direct, *ranges[0])
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="merge")
        list(self._executor.map(lambda r: self._sum_range(readers, layout, weights, segments, direct, *r), ranges))

    def _sum_range(
        self, readers, layout: FlatLayout, weights, segments, direct: bool, slot: int, bounds: tuple[int, int]
    ) -> None:
        lo, hi = bounds
        buffers = self.buffers(slot, len(readers) + (not direct), self.block * max(layout.itemsize, 4))
        scratch = None if direct else buffers[-1].view(torch.float32)
        seg = bisect.bisect_right([o for o, _, _ in segments], lo) - 1
        for start in range(lo, hi, self.block):
            count = min(self.block, hi - start)
            end = start + count
            offset, n, target = segments[seg]
            inside = offset <= start and end <= offset + n and target.dtype == torch.float32
            if scratch is None or inside:  # accumulate in place: no copy through the scratch block
                acc = target[start - offset : end - offset]
            else:
                acc = scratch[:count]
            scaled_into(acc, read_flat(readers[0], layout, start, count, buffers[0]), weights[0])
            for r, w, buf in zip(readers[1:], weights[1:], buffers[1:]):
                acc.add_(read_flat(r, layout, start, count, buf), alpha=w)
            if scratch is None or inside:
                if end == offset + n:
                    seg += 1
                continue
            while seg < len(segments) and segments[seg][0] < end:  # copy the block into each tensor it covers
                offset, n, target = segments[seg]
                lo_, hi_ = max(offset, start), min(offset + n, end)
                target[lo_ - offset : hi_ - offset].copy_(acc[lo_ - start : hi_ - start])
                if offset + n > end:
                    break
                seg += 1


def linear_merge(
    paths: Sequence[Path | str],
    weights: Sequence[float] | None = None,
    out: dict[str, torch.Tensor] | None = None,
    block: int = BLOCK,
) -> dict[str, torch.Tensor]:
    """One merge with its own threads and buffers; hold a LinearMerge open for many."""
    with LinearMerge(block) as method:
        return method.merge(paths, weights, out)
