"""Safetensors I/O, the only weight format: atomic saves; loads that re-tie shared tensors."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model

from .store import atomic_path, record_digest


@contextmanager
def os_errors(path: Path) -> Iterator[None]:
    """safetensors reports a failed write (a full disk, no permission) as its own error type: raise it as the
    OSError it is."""
    try:
        yield
    except SafetensorError as e:
        found = re.search(r"os error (\d+)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from e


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Model weights to `path` atomically; tied aliases are stored once. Returns the file's SHA-256 (recorded
    beside it)."""
    with atomic_path(path) as tmp, os_errors(path):
        save_model(model, str(tmp), metadata=metadata)
    return record_digest(path)


def save_state(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """Tensors to `path` atomically; returns the file's SHA-256 (recorded beside it)."""
    with atomic_path(path) as tmp, os_errors(path):
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    return record_digest(path)


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Strict: every tensor of the model is in the file or tied to one that is."""
    load_model(model, str(path), strict=True)
    return model
