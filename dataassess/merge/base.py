"""One interface for every merge method (in the spirit of mergekit's merge_methods/)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


class MergeMethod:
    """merge(paths, weights, out) -> merged state dict, written into `out` when given.

    Inputs are safetensors files read lazily; weights are normalized to sum to 1 (None: uniform).
    A method may hold threads and buffers across merges: use it as a context manager.
    """

    def merge(
        self,
        paths: Sequence[Path | str],
        weights: Sequence[float] | None = None,
        out: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
