"""Safetensors I/O: atomic saves, tied-weight-aware loads."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file, save_model

from .store import atomic_path


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Model weights to `path` atomically; tied aliases are stored once."""
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)


def save_state(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)


def check_loadable(model: torch.nn.Module, keys: set[str]) -> None:
    """Every parameter and buffer of the model is in `keys` or tied to one that is; no extra keys."""
    params = model.state_dict(keep_vars=True)
    if unexpected := sorted(keys - params.keys()):
        raise ValueError(f"weights have keys the model lacks: {unexpected[:5]}")
    ptr_names: dict[int, set[str]] = {}
    for name, t in params.items():
        ptr_names.setdefault(t.data_ptr(), set()).add(name)
    for name in params.keys() - keys:
        if not ptr_names[params[name].data_ptr()] & keys:
            raise ValueError(f"weights lack '{name}', which is not tied to a loaded tensor")


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load a state dict whose tied aliases may be absent; anything else missing is an error."""
    check_loadable(model, set(state))
    model.load_state_dict(state, strict=False)
    return model


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    return load_state(model, load_file(str(path)))
