"""What an intake publishes to MLflow: the pool's models in the registry, the ranking run, the champion."""

from __future__ import annotations

from mlflow import MlflowClient

from dataassess.config import Settings
from dataassess.errors import UserError
from dataassess.optimize import after_run
from dataassess.pipeline import RunResult, serial_map
from dataassess.steps import materialize, mixture_of
from dataassess.store import Store, read_json

from . import models
from .optimize import log_optimization
from .rankings import link_champion, log_snapshot


def register_models(client: MlflowClient, settings: Settings, result: RunResult) -> tuple[dict[str, str], list[str]]:
    """The seed and every unit model of the run, each registered once; returns (version by unit, units newly registered)."""
    store, pool, seed = Store(settings.store), result.inputs.pool, result.inputs.seed
    seed_version = models.register_seed(client, store.root, pool, seed).version
    versions, new = {}, []
    units = {u.name: u for u in result.inputs.units}
    for unit, model in result.models.items():
        tokens = store.unit_tokens(units[unit].digest) if unit in units else None
        mv, is_new = models.register_unit(
            client, store.root, pool, model, store.weights(model.key), seed, seed_version, tokens
        )
        versions[unit] = mv.version
        new += [unit] if is_new else []
    return versions, new


def publish_ranking(
    client: MlflowClient, settings: Settings, result: RunResult, versions: dict[str, str], summary: dict
) -> dict:
    """Log the ranking run (with the pool's fidelity figures) and register the best mixture as the champion, each linking the other."""
    store, pool, seed = Store(settings.store), result.inputs.pool, result.inputs.seed
    snapshot = read_json(result.snapshot)
    eval_info = {}
    for name, digest in result.inputs.eval_sets.items():
        es = read_json(store.eval_set(digest))
        eval_info[name] = {
            "digest": digest,
            "tokens": es["tokens"],
            "bytes": es["bytes"],
            "documents": es["documents"],
            "path": str(store.eval_set(digest).resolve()),
        }
    run_id = log_snapshot(client, store.root, pool, snapshot, result.ranking, versions, eval_info, summary)
    top = result.ranking[0]
    best = mixture_of(top.units, result.models, settings.rank.weighting)
    exp_id = client.get_run(run_id).info.experiment_id
    champion = models.register_champion(
        client,
        store.root,
        pool,
        materialize(store, best),
        seed,
        top.units,
        top.scores,
        best.key,
        (exp_id, run_id),
        snapshot["ranked_by"],
    )
    link_champion(client, run_id, pool, champion.version, snapshot, result.ranking)
    return {"snapshot": str(result.snapshot), "ranking_run_id": run_id, "champion_version": champion.version}


def publish_weights(
    client: MlflowClient, settings: Settings, result: RunResult, ranking_run_id: str, progress: bool = False
) -> dict:
    """Re-optimize the pool's mixture weights (warm-started) and log them beside the ranking run.
    A pool of one partition has no weights to choose: skipped, and said so."""
    partitions = {m.partition for m in result.models.values()}
    if len(partitions) < 2:
        return {"skipped": f"one partition ({', '.join(partitions)}): no weights to choose"}
    try:
        opt = after_run(result, settings, serial_map(progress))
    except UserError as e:  # bounds or objective that do not fit this pool: the ranking stands
        return {"skipped": str(e)}
    run_id = log_optimization(client, settings.store, result.inputs.pool, opt.report, opt.cv, ranking_run_id)
    return {
        "weights": opt.report["weights"],
        "change": opt.report.get("change"),
        "optimize_run_id": run_id,
        "surrogate_spearman": opt.report["surrogate"]["spearman"],
        "scored": opt.report["counts"]["scored"],
    }
