"""The entities that flow through the pipeline, each with an explicit JSON form.

corpus -> Unit -> UnitModel -> Mixture -> Score (per EvalSet) -> RankedMixture
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from .files import short_key


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
    seed_loss: float | None = None  # the seed's mean loss on the unit's first training sequences
    end_loss: float | None = None  # this model's, on the same sequences


@dataclass(frozen=True)
class MergeSpec(JsonForm):
    """A merge method by name (dataassess/merge/) and its parameters, every declared one set."""

    method: str = "linear"
    params: tuple[tuple[str, float], ...] = ()

    @property
    def label(self) -> str:
        return self.method + "".join(f" {k}={v:g}" for k, v in self.params)

    def to_json(self) -> dict:
        return {"method": self.method, "params": dict(self.params)}


class ModelRef(Protocol):
    """What a mixture needs of a unit model: its store key, weights digest and distinct tokens."""

    key: str
    weights_digest: str
    source_tokens: int


@dataclass(frozen=True)
class Mixture:
    """Unit models merged into one by a merge method: uniform (weights None) or weighted. Built by mixture_of only."""

    units: tuple[str, ...]
    model_keys: tuple[str, ...]
    digests: tuple[str, ...]  # of the models' weights files: a rebuilt model that differs gives new keys
    weights: tuple[float, ...] | None
    merge: MergeSpec

    @property
    def key(self) -> str:
        """Order-free: the same weights files with the same weights, merged the same way, give the same key."""
        weights = self.weights or [1.0] * len(self.model_keys)
        models = sorted([k, w, d] for k, w, d in zip(self.model_keys, weights, self.digests))
        return short_key({"models": models, "merge": self.merge.to_json()})

    @property
    def label(self) -> str:
        return " + ".join(self.units)


def mixture_of(
    units: Sequence[str],
    models: Mapping[str, ModelRef],
    merge: MergeSpec,
    weights: str | Mapping[str, float] | None = None,
) -> Mixture:
    """The one way to name a mixture: its units' models and weights digests, its weights (None or "uniform",
    "tokens": by distinct pre-upsampling tokens, or a share per unit) and its merge method."""
    ms = [models[u] for u in units]
    missing = [u for u, m in zip(units, ms) if not m.weights_digest]
    if missing:
        raise ValueError(f"unit models without a weights digest: {missing}")
    if weights is None or weights == "uniform":
        w = None
    elif weights == "tokens":
        w = tuple(float(m.source_tokens) for m in ms)
    elif isinstance(weights, Mapping):
        w = tuple(round(float(weights[u]), 9) for u in units)
    else:
        raise ValueError(f"unknown weighting {weights!r}")
    return Mixture(tuple(units), tuple(m.key for m in ms), tuple(m.weights_digest for m in ms), w, merge)


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
class TaskSet(JsonForm):
    """A task as token ids: per item the context, every choice (a gold-continuation item has one) and the gold
    choice's index. Scored by the log-likelihood of each choice given its context (dataassess/tasks.py)."""

    name: str
    digest: str  # of the token ids: changes with the records, tokenizer or context length
    kind: str  # "choice" (multiple choice) or "gold" (gold continuation)
    items: list[tuple[list[int], list[list[int]], int, list[int]]] = field(repr=False)  # ctx, choices, gold, bytes
    tokens: int  # gold answers' tokens
    bytes: int  # gold answers' UTF-8 bytes
    documents: int  # items

    @classmethod
    def from_json(cls, d: dict) -> TaskSet:
        items = [(c, ch, g, b) for c, ch, g, b in d["items"]]
        return cls(d["name"], d["digest"], d["kind"], items, d["tokens"], d["bytes"], d["documents"])


@dataclass(frozen=True)
class Score(JsonForm):
    """One model on one evaluation set. Stored as JSON; the derived figures are properties."""

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


@dataclass(frozen=True)
class TaskScore(Score):
    """One model on one task set: nll, tokens and bytes are the gold answers' sums; the metrics are means over
    items. Its perplexity is the gold answer's per-byte perplexity, 2 ** gold_bpb, so that a task set ranks,
    screens, calibrates and enters the macro as a text set does (lower is better; its log is gold_bpb * ln 2)."""

    items: int
    gold_bpb: float  # -log2 p(gold answer | context) / bytes(answer), averaged over items
    choice_accuracy: float | None  # argmax of log-likelihood per byte is the gold choice (multiple choice only)
    choice_accuracy_raw: float | None  # argmax of total log-likelihood
    gold_prob_norm: float | None  # p(gold) / sum of p(choice), averaged
    chance: float | None  # expected accuracy of a random pick: mean of 1 / number of choices

    @property
    def perplexity(self) -> float:
        return 2.0**self.gold_bpb

    @property
    def bits_per_byte(self) -> float:
        return self.gold_bpb

    def metrics(self) -> dict[str, float]:
        keys = ("gold_bpb", "choice_accuracy", "choice_accuracy_raw", "gold_prob_norm", "chance")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None} | {"items": self.items}

    def to_json(self) -> dict:
        return {**super().to_json(), **asdict(self)}


def score_from_json(d: dict) -> Score:
    return TaskScore.from_json(d) if "gold_bpb" in d else Score.from_json(d)


def eval_set_from_json(d: dict) -> EvalSet | TaskSet:
    return TaskSet.from_json(d) if "items" in d else EvalSet.from_json(d)


def perplexities(scores: Mapping[str, Score]) -> dict[str, float]:
    """Perplexity per evaluation set, sorted by set name."""
    return {name: scores[name].perplexity for name in sorted(scores)}


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
    tasks: dict[str, dict[str, float]] | None = None  # per task set: gold_bpb, choice accuracies, ... (TaskScore)
    families: dict[str, dict[str, float]] | None = None  # per task family: its sets' metrics averaged
    z_macro: float | None = None  # each set's log score z-scored across the ranked mixtures, averaged

    @property
    def k(self) -> int:
        return len(self.units)

    @classmethod
    def from_scores(cls, units: Sequence[str], scores: Mapping[str, Score], evaluated_fraction: float = 1.0):
        names = sorted(scores)
        tasks = {n: scores[n].metrics() for n in names if isinstance(scores[n], TaskScore)}
        return cls(
            list(units),
            {n: scores[n].perplexity for n in names},
            {n: scores[n].bits_per_byte for n in names},
            evaluated_fraction=evaluated_fraction,
            tasks=tasks or None,
        )

    def to_json(self) -> dict:
        d = {**asdict(self), "k": self.k}
        absent_values = (("evaluated_fraction", 1.0), ("proxy_scores", None), ("intervals", None), ("tasks", None))
        for key, absent in (*absent_values, ("families", None), ("z_macro", None)):
            if d[key] == absent:
                del d[key]
        return d


@dataclass
class Snapshot:
    """A pool's ranking at one time, with what it answers (budget), how far to trust it (fidelity),
    what changed since the previous one, and the inputs it was computed from."""

    pool: str
    created: str  # UTC stamp, also its file name
    ranking: list[RankedMixture]
    ranked_by: str = "macro"
    budget: dict = field(default_factory=dict)  # what the scores answer: mode, score, ...
    previous: str | None = None
    changes: dict = field(default_factory=dict)
    fidelity: dict = field(default_factory=dict)
    corpus: str = ""
    seed_digest: str = ""
    seed_scores: dict[str, float] = field(default_factory=dict)
    seed_tasks: dict[str, dict[str, float]] = field(default_factory=dict)  # the seed's task metrics, per task set
    families: dict[str, list[str]] = field(default_factory=dict)  # task family -> its sets
    units: dict[str, dict] = field(default_factory=dict)  # unit -> its model's key, digests and token counts
    eval_sets: dict[str, str] = field(default_factory=dict)
    quarantined: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    merge: dict = field(default_factory=dict)  # the merge method, its parameters and the weighting
    resorted: bool = False  # re-sorted from the stored scores by `ranking --by`

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["ranking"] = [r.to_json() for r in self.ranking]
        if not self.resorted:
            del d["resorted"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Snapshot:
        names = {f.name for f in fields(cls)}
        rows = [RankedMixture.from_json(r) for r in d["ranking"]]
        return cls(**{**{k: v for k, v in d.items() if k in names}, "ranking": rows})


@dataclass
class FidelityRecord(JsonForm):
    """A pool's latest fidelity study: its report and one row per mixture (proxy, truths, baselines)."""

    report: dict
    rows: list[dict]


@dataclass
class OptimizationRecord(JsonForm):
    """A pool's latest weight search: its report, and the points it scored (the next search's warm start)."""

    report: dict
    design: list[dict[str, float]]
    round_points: list[dict[str, float]]
    partitions: dict[str, list[str]]
    proxies: list[dict]
