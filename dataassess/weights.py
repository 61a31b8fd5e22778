"""Safetensors I/O, the only weight format: atomic saves; loads that re-tie shared tensors."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_model, save_file, save_model

from .store import atomic_path, record_digest


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> str:
    """Model weights to `path` atomically; tied aliases are stored once. Returns the file's SHA-256 (recorded beside it)."""
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)
    return record_digest(path)


def save_state(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """Tensors to `path` atomically; returns the file's SHA-256 (recorded beside it)."""
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    return record_digest(path)


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Strict: every tensor of the model is in the file or tied to one that is."""
    load_model(model, str(path), strict=True)
    return model
