"""What an intake publishes to MLflow: the pool's models in the registry, the ranking run, the champion."""
from __future__ import annotations

from mlflow import MlflowClient

from dataassess.config import Settings
from dataassess.optimize import after_run
from dataassess.pipeline import RunResult, serial_map
from dataassess.steps import materialize, mixture_of
from dataassess.store import Store, read_json

from . import models
from .fidelity import snapshot_tags
from .optimize import log_optimization
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


def publish_weights(client: MlflowClient, settings: Settings, result: RunResult, ranking_run_id: str) -> dict:
    """Re-optimize the pool's mixture weights (warm-started) and log them beside the ranking run.
    A pool of one partition has no weights to choose: skipped, and said so."""
    partitions = {m.partition for m in result.models.values()}
    if len(partitions) < 2:
        return {"skipped": f"one partition ({', '.join(partitions)}): no weights to choose"}
    try:
        opt = after_run(result, settings, serial_map(progress=False))
    except ValueError as e:  # bounds or objective that do not fit this pool: the ranking stands
        return {"skipped": str(e)}
    run_id = log_optimization(client, settings.store, result.inputs.pool, opt.report, opt.cv, ranking_run_id)
    return {"weights": opt.report["weights"], "change": opt.report.get("change"), "optimize_run_id": run_id,
            "surrogate_spearman": opt.report["surrogate"]["spearman"], "scored": opt.report["counts"]["scored"]}
