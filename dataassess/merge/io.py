"""Lazy safetensors readers: tensors are read one at a time, memory-mapped."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from safetensors import safe_open


@contextmanager
def open_all(paths: Sequence[Path | str]) -> Iterator[list]:
    """Open every file lazily; all must hold the same tensor names."""
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(str(p), framework="pt")) for p in paths]
        keys = set(handles[0].keys())
        for p, h in zip(paths, handles):
            if set(h.keys()) != keys:
                diff = sorted(set(h.keys()) ^ keys)[:5]
                raise ValueError(f"{p} holds different tensors than {paths[0]}: {diff}")
        yield handles
