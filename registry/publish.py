"""What an intake publishes to MLflow: the pool's models in the registry, the ranking run, the champion."""

from __future__ import annotations

from mlflow import MlflowClient

from dataassess.pipeline import RunResult
from dataassess.steps import materialize
from dataassess.store import read_json

from . import models
from .rankings import link_champion, log_snapshot


def register_models(client: MlflowClient, result: RunResult) -> tuple[dict[str, str], list[str]]:
    """The seed and every unit model of the run, each registered once; returns (version by unit, units newly
    registered)."""
    pool = result.pool
    store, seed = pool.store, pool.seed
    seed_version = models.register_seed(client, store, pool.name, seed).version
    versions, new = {}, []
    units = {u.name: u for u in pool.units}
    for unit, model in pool.models.items():
        tokens = store.unit_tokens(units[unit].digest) if unit in units else None
        mv, is_new = models.register_unit(
            client, store, pool.name, model, store.weights(model.key), seed, seed_version, tokens
        )
        versions[unit] = mv.version
        new += [unit] if is_new else []
    return versions, new


def publish_ranking(client: MlflowClient, result: RunResult, versions: dict[str, str], summary: dict) -> dict:
    """Log the ranking run (with the pool's fidelity figures) and register the best mixture as the champion, each
    linking the other."""
    pool = result.pool
    store, seed = pool.store, pool.seed
    snapshot = result.snapshot.to_json()
    eval_info = {}
    for name, digest in pool.eval_sets.items():
        es = read_json(store.eval_set(digest))
        eval_info[name] = {
            "digest": digest,
            "tokens": es["tokens"],
            "bytes": es["bytes"],
            "documents": es["documents"],
            "path": str(store.eval_set(digest).resolve()),
        }
    run_id = log_snapshot(client, store, pool.name, snapshot, result.ranking, versions, eval_info, summary)
    top = result.ranking[0]
    best = pool.mixture(top.units)
    exp_id = client.get_run(run_id).info.experiment_id
    champion = models.register_champion(
        client,
        store,
        pool.name,
        materialize(store, seed, best),
        seed,
        top.units,
        top.scores,
        best.key,
        (exp_id, run_id),
        snapshot["ranked_by"],
    )
    link_champion(client, run_id, pool.name, champion.version, snapshot, result.ranking)
    return {"snapshot": str(result.snapshot_path), "ranking_run_id": run_id, "champion_version": champion.version}
