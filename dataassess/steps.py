"""The pipeline's steps, each cached in the store by the digests of its inputs.

A step takes and returns small typed records (units, unit models, mixtures, eval-set digests),
never tensors, so an orchestrator can run it as a task on another thread, process or machine.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from . import __version__
from .config import Settings
from .evalsets import EvalSets
from .merge import linear_merge
from .scoring import Scorer
from .seed import Seed
from .store import Store, intact, read_json, short_key, write_json
from .train import TrainResult, cpu_threads, resolve_device, to_sequences, train_lm
from .types import Mixture, Unit, UnitModel
from .units import unit_tokens
from .weights import save_state, save_weights

log = logging.getLogger(__name__)


def unit_model_key(unit: Unit, seed: Seed, settings: Settings) -> str:
    return short_key({"unit": unit.digest, "seed": seed.digest, "train": settings.train.digest()})


def finished_unit_model(store: Store, key: str) -> UnitModel | None:
    """A trained unit model, or None (never trained, killed mid-way, or its weights removed)."""
    meta = store.finished(key)
    return None if meta is None else UnitModel.from_json(meta)


def train_seed_copy(
    store: Store,
    kind: str,
    key: str,
    sequences: torch.Tensor,
    tokens: int,
    seed: Seed,
    settings: Settings,
    desc: str,
    progress: bool,
    **train_options,
) -> TrainResult:
    """Continue-pretrain the seed on `tokens` tokens of `sequences`; weights written to the store
    (the caller writes the metadata after, which marks the model finished)."""
    with cpu_threads(settings.threads):
        model = seed.load_model()
        result = train_lm(
            model,
            sequences,
            settings.train,
            tokens,
            resolve_device(settings.device),
            desc=desc,
            progress=progress,
            **train_options,
        )
        digest = save_weights(model.cpu(), store.weights(key, kind))  # no metadata but its format: a byte-stable header
    return dataclasses.replace(result, weights_digest=digest)


def mixture_of(units: Sequence[str], models: Mapping[str, UnitModel], weighting: str) -> Mixture:
    """The mixture of these units, weighted uniformly or by their distinct (pre-upsampling) tokens."""
    ms = [models[u] for u in units]
    weights = None if weighting == "uniform" else tuple(float(m.source_tokens) for m in ms)
    return Mixture(tuple(units), tuple(m.key for m in ms), weights, tuple(m.weights_digest for m in ms))


class Steps:
    """The cached steps of one run over a store, seed and settings. Owns the run's Scorer."""

    def __init__(self, settings: Settings, seed: Seed, progress: bool = False):
        self.settings, self.seed, self.progress = settings, seed, progress
        self.store = Store(settings.store)
        self.evalsets = EvalSets(self.store)
        self.scorer = Scorer(settings.score.batch_size, resolve_device(settings.device), settings.threads, seed)

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc) -> None:
        self.scorer.close()

    # ---- train -------------------------------------------------------------------------

    def trained(self, unit: Unit) -> UnitModel | None:
        """The unit's finished model (its weights checked), or None when it must be trained."""
        return finished_unit_model(self.store, unit_model_key(unit, self.seed, self.settings))

    def train(self, unit: Unit) -> UnitModel:
        """Continue-pretrain the seed on one unit. Idempotent: a finished model is returned as it is."""
        key = unit_model_key(unit, self.seed, self.settings)
        if (done := finished_unit_model(self.store, key)) is not None:
            return done
        seqs = to_sequences(unit_tokens(self.store, unit), self.settings.train.seq_len)
        result = train_seed_copy(
            self.store, "models", key, seqs, unit.tokens, self.seed, self.settings, unit.name, self.progress
        )
        model = UnitModel(
            key=key,
            unit=unit.name,
            partition=unit.partition,
            unit_digest=unit.digest,
            seed_digest=self.seed.digest,
            train_config_hash=self.settings.train.digest(),
            tokens=result.tokens,
            source_tokens=unit.source_tokens,
            repeat=unit.repeat,
            steps=result.steps,
            final_loss=result.final_loss,
            wall_s=result.wall_s,
            code_version=__version__,
            train_config=self.settings.train.model_dump(),
            losses=[round(x, 5) for x in result.losses],
            finished_at=time.time(),
            weights_digest=result.weights_digest,
        )
        write_json(self.store.meta(key), model.to_json())
        return model

    # ---- score -------------------------------------------------------------------------

    def mixture(self, units: Sequence[str], models: Mapping[str, UnitModel]) -> Mixture:
        return mixture_of(units, models, self.settings.rank.weighting)

    def cached(self, model_key: str, eval_sets: Mapping[str, str]) -> dict[str, dict]:
        """Stored scores of a model (a mixture's key, or a single model's) on the named eval sets."""
        out = {}
        for name, digest in eval_sets.items():
            path = self.store.score(model_key, digest, self.settings.score.digest())
            if path.exists():
                try:
                    out[name] = read_json(path)
                except ValueError:  # not the JSON written there: scored again
                    log.warning("store: %s is not a valid score file: scoring again", path)
        return out

    def score(self, mixture: Mixture, eval_sets: Mapping[str, str]) -> dict[str, dict]:
        """A mixture's scores on every set (the merge of its unit models), computing only missing ones."""
        paths = [self.store.weights(k) for k in mixture.model_keys]
        return self.score_weights(mixture.key, paths, mixture.weights, eval_sets)

    def score_weights(
        self, model_key: str, paths: Sequence[Path], weights: Sequence[float] | None, eval_sets: Mapping[str, str]
    ) -> dict[str, dict]:
        scores = self.cached(model_key, eval_sets)
        missing = [n for n in eval_sets if n not in scores]
        if missing:
            sets = [self.evalsets.load(eval_sets[n]) for n in missing]
            for name, es, score in zip(missing, sets, self.scorer.score_merge(paths, weights, sets)):
                scores[name] = score.to_json()
                write_json(self.store.score(model_key, es.digest, self.settings.score.digest()), scores[name])
        return {n: scores[n] for n in eval_sets}

    def score_seed(self, eval_sets: Mapping[str, str]) -> dict[str, float]:
        """The seed's own perplexities: the reference every mixture should improve on."""
        scores = self.score_weights(
            short_key({"seed": self.seed.digest}), [self.seed.path / "model.safetensors"], None, eval_sets
        )
        return {n: s["perplexity"] for n, s in sorted(scores.items())}


def materialize(store: Store, mixture: Mixture) -> Path:
    """A mixture's merged weights, written to the store once (for the registry's champion)."""
    path = store.mixture_weights(mixture.key)
    if not intact(path):
        merged = linear_merge([store.weights(k) for k in mixture.model_keys], mixture.weights)
        save_state(merged, path, metadata={"units": ",".join(mixture.units)})
    return path
