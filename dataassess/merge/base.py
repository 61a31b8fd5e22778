"""One interface for every merge method, and the registry of methods by name (after mergekit's merge_methods/).

A method is one file in this package: a MergeMethod subclass with a `name`, its declared `parameters`
(with defaults) and `@register`. The package imports every module in it, so a new file is a new method,
usable as `merge.method` in the config, in mixture keys and in `dataassess fidelity --merge-method`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import torch

from ..errors import UserError
from ..types import MergeSpec

METHODS: dict[str, type[MergeMethod]] = {}


class MergeMethod:
    """merge(paths, weights, out, base=, params=) -> the merged state dict, written into `out` when given.

    Inputs are safetensors files of one shape, read lazily; weights are the mixture's (None: uniform), and
    each method says how it uses them. `base` is the seed's weights file, for methods that merge updates.
    A method may hold threads and buffers across merges: use it as a context manager.
    """

    name: ClassVar[str]
    parameters: ClassVar[dict[str, float]] = {}  # declared parameters and their defaults
    uses_base: ClassVar[bool] = False  # does it read the seed's weights (merging updates from them)?

    def merge(
        self,
        paths: Sequence[Path | str],
        weights: Sequence[float] | None = None,
        out: dict[str, torch.Tensor] | None = None,
        *,
        base: Path | str | None = None,
        params: Mapping[str, float] | None = None,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def resolved(cls, params: Mapping[str, float] | None) -> dict[str, float]:
        """Every declared parameter: the given value, else its default."""
        return {**cls.parameters, **(params or {})}

    @classmethod
    def check(cls, params: Mapping[str, float]) -> None:
        """Raise UserError for parameter values the method cannot use (every declared one is given)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def into(out: dict[str, torch.Tensor] | None, merged: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The merged tensors, copied into `out` (e.g. a model's parameters) when one is given."""
    if out is None:
        return merged
    for name, t in merged.items():
        out[name].copy_(t)
    return out


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[MergeMethod]:
    if name not in METHODS:
        raise UserError(f"unknown merge method '{name}'; methods are {', '.join(sorted(METHODS))}")
    return METHODS[name]


def merge_spec(method: str, params: Mapping[str, float] | None = None) -> MergeSpec:
    """A method's full specification (every declared parameter set), checked: unknown names are one UserError."""
    cls = method_class(method)
    unknown = sorted(set(params or {}) - set(cls.parameters))
    if unknown:
        known = ", ".join(sorted(cls.parameters)) or "none"
        raise UserError(f"merge method '{method}' has no parameter {', '.join(unknown)}; its parameters: {known}")
    resolved = cls.resolved(params)
    cls.check(resolved)
    return MergeSpec(method, tuple(sorted((k, float(v)) for k, v in resolved.items())))


def base_required(method: str, base: Path | str | None) -> Path | str:
    if base is None:
        raise ValueError(f"merge method '{method}' merges updates from the seed: pass base=")
    return base
