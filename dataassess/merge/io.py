"""Lazy safetensors reads with pread: nothing is memory-mapped, so resident memory does not
grow with the number of inputs (touched pages of a mapping count as resident until unmapped).

Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}}, then the raw tensor bytes.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class SafetensorsReader:
    def __init__(self, path: Path | str):
        self.path = str(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            (n,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
            header = json.loads(os.pread(self.fd, n, 8))
        except (struct.error, ValueError) as e:
            os.close(self.fd)
            raise ValueError(f"{path} is not a safetensors file: {e}") from None
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.tensors = {
            name: TensorInfo(DTYPES[h["dtype"]], tuple(h["shape"]), 8 + n + h["data_offsets"][0])
            for name, h in header.items()
        }

    def keys(self) -> list[str]:
        return list(self.tensors)

    @classmethod
    def keys_of(cls, path: Path | str) -> list[str]:
        reader = cls(path)
        reader.close()
        return reader.keys()

    def read(
        self, name: str, start: int = 0, count: int | None = None, buffer: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Elements [start, start + count) of the flattened tensor, into `buffer` (bytes) if given."""
        info = self.tensors[name]
        count = info.numel - start if count is None else count
        item = torch.empty(0, dtype=info.dtype).element_size()
        nbytes = count * item
        buf = torch.empty(nbytes, dtype=torch.uint8) if buffer is None or buffer.numel() < nbytes else buffer
        return self.read_raw(info.offset + start * item, nbytes, buf).view(info.dtype)

    def read_raw(self, offset: int, nbytes: int, buffer: torch.Tensor) -> torch.Tensor:
        """`nbytes` bytes from `offset` into the front of `buffer` (uint8)."""
        buf = buffer[:nbytes]
        view, done = memoryview(buf.numpy()), 0
        while done < nbytes:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got == 0:
                raise ValueError(f"{self.path} is truncated at byte {offset + done}")
            done += got
        return buf

    def close(self) -> None:
        os.close(self.fd)


@contextmanager
def open_all(paths: Sequence[Path | str]) -> Iterator[list[SafetensorsReader]]:
    """Open every file; all must hold the same tensor names, shapes and dtypes."""
    with ExitStack() as stack:
        readers = []
        for p in paths:
            r = SafetensorsReader(p)
            stack.callback(r.close)
            readers.append(r)
        first = readers[0].tensors
        for p, r in zip(paths, readers):
            if r.tensors.keys() != first.keys():
                diff = sorted(set(r.tensors) ^ set(first))[:5]
                raise ValueError(f"{p} holds different tensors than {paths[0]}: {diff}")
            bad = [k for k in first if (r.tensors[k].shape, r.tensors[k].dtype) != (first[k].shape, first[k].dtype)]
            if bad:
                raise ValueError(f"{p} differs from {paths[0]} in shape or dtype of {bad[:5]}")
        yield readers
