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


def stable_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    """safetensors writes a metadata map's keys in a random order, and the store keys files by their bytes:
    one key at most keeps a header byte-stable."""
    if metadata and len(metadata) > 1:
        raise ValueError(f"one metadata key at most keeps a safetensors header byte-stable, got {sorted(metadata)}")
    return metadata


def save_weights(model: torch.nn.Module, path: Path) -> str:
    """Model weights to `path` atomically; tied aliases are stored once. Returns the file's SHA-256 (recorded
    beside it). No metadata but the `format` save_model writes: a byte-stable header."""
    with atomic_path(path) as tmp, os_errors(path):
        save_model(model, str(tmp))
    return record_digest(path)


def save_state(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """Tensors to `path` atomically, with at most one metadata key; returns the file's SHA-256 (recorded
    beside it)."""
    with atomic_path(path) as tmp, os_errors(path):
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=stable_metadata(metadata))
    return record_digest(path)


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Strict: every tensor of the model is in the file or tied to one that is."""
    load_model(model, str(path), strict=True)
    return model
