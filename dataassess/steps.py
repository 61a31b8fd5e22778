"""The pipeline's steps, each cached in the store by the digests of its inputs.

A step takes and returns small typed records (units, unit models, mixtures, eval-set digests),
never tensors, so an orchestrator can run it as a task on another thread, process or machine.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from . import __version__
from .config import Settings
from .evalsets import EvalSets
from .merge import method_class
from .scoring import Scorer
from .seed import Seed
from .store import Store, intact, read_json, short_key, write_json
from .train import TrainResult, cpu_threads, mean_loss, resolve_device, to_sequences, train_lm
from .types import MergeSpec, Mixture, Score, Unit, UnitModel, perplexities, score_from_json
from .units import unit_tokens
from .weights import save_state, save_weights

log = logging.getLogger(__name__)
LINEAR = MergeSpec("linear")


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
    cfg, device = settings.train.for_seed(seed.imported), resolve_device(settings.device)
    with cpu_threads(settings.threads):
        model = seed.load_model()
        probe = sequences[: max(1, cfg.batch_tokens // sequences.shape[1])]  # the same tokens before and after
        seed_loss = mean_loss(model, probe, cfg.micro_batch, device)
        result = train_lm(model, sequences, cfg, tokens, device, desc=desc, progress=progress, **train_options)
        end_loss = mean_loss(model, probe, cfg.micro_batch, device)
        digest = save_weights(model.cpu(), store.weights(key, kind))
    return dataclasses.replace(result, weights_digest=digest, seed_loss=seed_loss, end_loss=end_loss)


def check_training(name: str, seed_loss: float, end_loss: float) -> str | None:
    """Why a trained model's loss on its first sequences says training went wrong, or None: it rose above the
    seed's (diverged), or moved by less than 0.1% (did nothing)."""
    if not (math.isfinite(seed_loss) and math.isfinite(end_loss)):
        return f"{name}: loss {seed_loss:.4f} -> {end_loss:.4f} is not finite: training diverged; lower train.lr"
    if end_loss > seed_loss:
        return (
            f"{name}: loss on its first sequences rose from the seed's {seed_loss:.4f} to {end_loss:.4f}: "
            "training diverged; lower train.lr"
        )
    if seed_loss - end_loss < 1e-3 * seed_loss:
        return (
            f"{name}: loss on its first sequences moved by less than 0.1% ({seed_loss:.4f} -> {end_loss:.4f}): "
            "training did almost nothing; raise train.lr or units.tokens"
        )
    return None


class Steps:
    """The cached steps of one run over a store, seed and settings. Owns the run's Scorer."""

    def __init__(self, settings: Settings, seed: Seed, store: Store, progress: bool = False):
        self.settings, self.seed, self.store, self.progress = settings, seed, store, progress
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
            train_config=self.settings.train.for_seed(self.seed.imported).model_dump(),
            losses=[round(x, 5) for x in result.losses],
            finished_at=time.time(),
            weights_digest=result.weights_digest,
            seed_loss=result.seed_loss,
            end_loss=result.end_loss,
        )
        if (problem := check_training(f"unit {unit.name}", result.seed_loss, result.end_loss)) is not None:
            log.warning(problem)
        write_json(self.store.meta(key), model.to_json())
        return model

    # ---- score -------------------------------------------------------------------------

    def cached(self, model_key: str, eval_sets: Mapping[str, str]) -> dict[str, Score]:
        """Stored scores of a model (a mixture's key, or a single model's) on the named eval sets."""
        out = {}
        for name, digest in eval_sets.items():
            path = self.store.score(model_key, digest, self.settings.score.digest())
            if path.exists():
                try:
                    out[name] = score_from_json(read_json(path))
                except (ValueError, TypeError):  # not the JSON written there: scored again
                    log.warning("store: %s is not a valid score file: scoring again", path)
        return out

    def has_scores(self, model_key: str, eval_sets: Mapping[str, str]) -> bool:
        """Whether every score of the model on the sets is stored (files only: nothing is read)."""
        digest = self.settings.score.digest()
        return all(self.store.score(model_key, d, digest).exists() for d in eval_sets.values())

    def score(self, mixture: Mixture, eval_sets: Mapping[str, str]) -> dict[str, Score]:
        """A mixture's scores on every set (the merge of its unit models), computing only missing ones."""
        paths = [self.store.weights(k) for k in mixture.model_keys]
        return self.score_weights(mixture.key, paths, mixture.weights, eval_sets, mixture.merge)

    def score_weights(
        self,
        model_key: str,
        paths: Sequence[Path],
        weights: Sequence[float] | None,
        eval_sets: Mapping[str, str],
        merge: MergeSpec = LINEAR,
    ) -> dict[str, Score]:
        scores = self.cached(model_key, eval_sets)
        missing = [n for n in eval_sets if n not in scores]
        if missing:
            sets = [self.evalsets.load(eval_sets[n]) for n in missing]
            for name, es, score in zip(missing, sets, self.scorer.score_merge(paths, weights, sets, merge)):
                scores[name] = score
                write_json(self.store.score(model_key, es.digest, self.settings.score.digest()), score.to_json())
        return {n: scores[n] for n in eval_sets}

    def seed_scores(self, eval_sets: Mapping[str, str]) -> dict[str, Score]:
        """The seed's own scores: the reference every mixture should improve on."""
        return self.score_weights(
            short_key({"seed": self.seed.digest}), [self.seed.path / "model.safetensors"], None, eval_sets
        )

    def score_seed(self, eval_sets: Mapping[str, str]) -> dict[str, float]:
        """The seed's own perplexities."""
        return perplexities(self.seed_scores(eval_sets))


def materialize(store: Store, seed: Seed, mixture: Mixture) -> Path:
    """A mixture's merged weights, by its merge method, written to the store once (the champion's, an export's)."""
    path = store.mixture_weights(mixture.key)
    if not intact(path):
        with method_class(mixture.merge.method)() as method:
            merged = method.merge(
                [store.weights(k) for k in mixture.model_keys],
                mixture.weights,
                base=seed.base_weights() if method.uses_base else None,
                params=dict(mixture.merge.params),
            )
        save_state(merged, path, metadata={"mixture": f"{','.join(mixture.units)} merged by {mixture.merge.label}"})
    return path
