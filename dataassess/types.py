"""The entities that flow through the pipeline, each with an explicit JSON form.

corpus -> Unit -> UnitModel -> Mixture -> Score (per EvalSet) -> RankedMixture
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .store import short_key


class JsonForm:
    """to_json / from_json for a dataclass of JSON-able fields (unknown keys are ignored)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Unit(JsonForm):
    """An equal-token slice of one partition; its tokens live in the store under its digest."""

    name: str  # "<partition>.u<index>"
    partition: str
    index: int
    n_units: int  # units cut from this partition
    digest: str  # content + cut + tokenizer: changes when any of them does
    partition_digest: str
    tokens: int  # always the unit budget
    source_tokens: int  # distinct tokens before resampling
    repeat: float  # repetition factor: tokens / source_tokens


@dataclass(frozen=True)
class UnitModel(JsonForm):
    """The seed continue-pretrained on one unit; its weights live in the store under its key."""

    key: str  # of (unit digest, seed digest, train config)
    unit: str
    partition: str
    unit_digest: str
    seed_digest: str
    train_config_hash: str
    tokens: int
    source_tokens: int
    repeat: float
    steps: int
    final_loss: float
    wall_s: float
    code_version: str
    train_config: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # training loss per optimizer step
    finished_at: float = 0.0  # unix time training ended (0: unknown)
    weights_digest: str = ""  # SHA-256 of its weights file: mixtures and their scores are keyed by it


@dataclass(frozen=True)
class Mixture(JsonForm):
    """Units merged into one model: uniform (weights None) or weighted."""

    units: tuple[str, ...]
    model_keys: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    digests: tuple[str, ...] = ()  # of the models' weights files: a rebuilt model that differs gives new keys

    @property
    def key(self) -> str:
        """Order-free: the same models (and weights files) with the same weights give the same key."""
        weights = self.weights or [1.0] * len(self.model_keys)
        if self.digests and all(self.digests):
            return short_key({"models": [list(p) for p in sorted(zip(self.model_keys, weights, self.digests))]})
        return short_key({"models": [list(p) for p in sorted(zip(self.model_keys, weights))]})

    @property
    def label(self) -> str:
        return " + ".join(self.units)

    @classmethod
    def from_json(cls, d: dict) -> Mixture:
        w = d.get("weights")
        return cls(tuple(d["units"]), tuple(d["model_keys"]), None if w is None else tuple(w))


@dataclass(frozen=True)
class EvalSet(JsonForm):
    name: str
    digest: str  # of the token windows: changes with text, tokenizer or windowing
    windows: list[tuple[list[int], int]] = field(repr=False)  # (input ids, first scored position)
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the scored text
    documents: int

    @classmethod
    def from_json(cls, d: dict) -> EvalSet:
        return cls(d["name"], d["digest"], [(w, s) for w, s in d["windows"]], d["tokens"], d["bytes"], d["documents"])


@dataclass(frozen=True)
class Score(JsonForm):
    nll: float  # summed, nats
    tokens: int
    bytes: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes)

    def to_json(self) -> dict:
        return {
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "nll": self.nll,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


@dataclass
class RankedMixture(JsonForm):
    """One row of a ranking. rank_change: places moved up since the previous snapshot (None: new)."""

    units: list[str]
    scores: dict[str, float]  # perplexity per evaluation set
    bits_per_byte: dict[str, float]
    macro: float = float("nan")  # geometric mean of the perplexities
    rank: int = 0
    rank_in_size: int = 0  # among mixtures with as many units
    rank_change: int | None = None
    evaluated_fraction: float = 1.0  # < 1: screened out on a slice of each evaluation set
    proxy_scores: dict[str, float] | None = None  # under a calibration: the raw average's perplexities
    intervals: dict[str, list[float]] | None = None  # under a calibration: 95% interval per set

    @property
    def k(self) -> int:
        return len(self.units)

    def to_json(self) -> dict:
        d = {**asdict(self), "k": self.k}
        for key, absent in (("evaluated_fraction", 1.0), ("proxy_scores", None), ("intervals", None)):
            if d[key] == absent:
                del d[key]
        return d
