"""What an intake publishes to MLflow: the pool's models in the registry, the ranking run, the champion."""
from __future__ import annotations

from mlflow import MlflowClient

from dataassess.config import Settings
from dataassess.pipeline import RunResult
from dataassess.steps import materialize, mixture_of
from dataassess.store import Store, read_json

from . import models
from .fidelity import snapshot_tags
from .rankings import log_snapshot


def register_models(client: MlflowClient, settings: Settings, result: RunResult) -> tuple[dict[str, str], list[str]]:
    """The seed and every unit model of the run, each registered once; returns (version by unit, units newly registered)."""
    store, pool, seed = Store(settings.store), result.inputs.pool, result.inputs.seed
    seed_version = models.register_seed(client, store.root, pool, seed).version
    versions, new = {}, []
    for unit, model in result.models.items():
        mv, is_new = models.register_unit(client, store.root, pool, model, store.weights(model.key), seed, seed_version)
        versions[unit] = mv.version
        new += [unit] if is_new else []
    return versions, new


def publish_ranking(client: MlflowClient, settings: Settings, result: RunResult, versions: dict[str, str], summary: dict) -> dict:
    """Log the ranking run (with the latest fidelity figures) and register the best mixture as the champion."""
    store, pool, seed = Store(settings.store), result.inputs.pool, result.inputs.seed
    snapshot = read_json(result.snapshot)
    eval_info = {}
    for name, digest in result.inputs.eval_sets.items():
        es = read_json(store.eval_set(digest))
        eval_info[name] = {"digest": digest, "tokens": es["tokens"], "bytes": es["bytes"], "documents": es["documents"],
                           "path": str(store.eval_set(digest).resolve())}
    fidelity = snapshot_tags(read_json(store.fidelity())["report"] if store.fidelity().exists() else None)
    run_id = log_snapshot(client, store.root, pool, snapshot, result.ranking, versions, eval_info, summary, fidelity)
    top = result.ranking[0]
    best = mixture_of(top.units, result.models, settings.rank.weighting)
    champion = models.register_champion(client, store.root, pool, materialize(store, best), seed, top.units, top.scores, best.key)
    return {"snapshot": str(result.snapshot), "ranking_run_id": run_id, "champion_version": champion.version}
