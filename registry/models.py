"""Unit models, the seed and the champion in the MLflow model registry.

Layout: one registered model per unit, named "<pool>.<unit>"; a new version
whenever the unit's content, the seed or the training config changes (the tag
`dataassess.model_key` identifies that triple). The alias `current` marks the
version rankings use. The seed is "<pool>-seed", the best mixture's merged
model "<pool>-champion" (alias `champion`).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from dataassess import __version__
from dataassess.seed import Seed

from .tracking import UNITS_EXPERIMENT, experiment_id

PYFUNC_CODE = str(Path(__file__).with_name("unit_pyfunc.py"))
REQUIREMENTS = ["torch", "transformers", "safetensors", "dataassess"]
CURRENT, CHAMPION = "current", "champion"
T = "dataassess."


def unit_tags(meta: dict, seed_version: str | None) -> dict[str, str]:
    tags = {
        "partition": meta["partition"], "unit": meta["unit"], "unit_digest": meta["unit_digest"],
        "seed_digest": meta["seed_digest"], "train_config_hash": meta["train_config_hash"], "tokens": meta["tokens"],
        "code_version": meta.get("code_version", __version__), "final_loss": f"{meta['final_loss']:.6f}",
        "model_key": meta["key"], "repeat": meta["repeat"], "source_tokens": meta["source_tokens"],
    }
    if seed_version:
        tags["seed_version"] = seed_version
    return {T + k: str(v) for k, v in tags.items()}


def find_version(client: MlflowClient, model_key: str) -> ModelVersion | None:
    """Is this (unit, seed, train config) already registered? One registry query."""
    found = client.search_model_versions(f"tags.`{T}model_key` = '{model_key}'", max_results=1)
    return found[0] if found else None


def _log_model_run(client, store: Path, run_name: str, weights: str, seed: Seed, params: dict, metrics: dict, tags: dict) -> tuple[str, str, str]:
    """A run holding the model as a pyfunc (safetensors + config + tokenizer); returns (run_id, model_uri, model_id)."""
    exp = experiment_id(client, UNITS_EXPERIMENT, store)
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        hf.mkdir()
        for f in seed.path.iterdir():
            if f.is_file() and f.suffix == ".json" and f.name not in ("seed.json", "seed_train.json"):
                shutil.copy(f, hf / f.name)
        with mlflow.start_run(experiment_id=exp, run_name=run_name, tags=tags) as run:
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=PYFUNC_CODE, artifacts={"weights": weights, "hf_folder": str(hf)},
                pip_requirements=REQUIREMENTS,
            )
    return run.info.run_id, info.model_uri, info.model_id


def _ensure_registered_model(client: MlflowClient, name: str, description: str) -> None:
    if not client.search_registered_models(f"name = '{name}'", max_results=1):
        client.create_registered_model(name, description=description)


def _register(client, name: str, logged: tuple[str, str, str], tags: dict, alias: str, description: str) -> ModelVersion:
    """Create the version with all its tags in one call, then point the alias at it."""
    run_id, source, model_id = logged
    _ensure_registered_model(client, name, description)
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id)
    client.set_registered_model_alias(name, alias, mv.version)
    return mv


def register_seed(client: MlflowClient, store: Path, pool: str, seed: Seed) -> ModelVersion:
    name = f"{pool}-seed"
    tags = {T + "seed_digest": seed.digest, T + "model_key": f"seed:{seed.digest}", T + "source": seed.source, T + "code_version": __version__}
    if (mv := find_version(client, f"seed:{seed.digest}")) is not None:
        return mv
    logged = _log_model_run(client, store, f"seed {seed.source}", str(seed.path / "model.safetensors"), seed, {"base_model": seed.source}, {}, tags)
    return _register(client, name, logged, tags, CURRENT, "The seed every unit model continues from.")


def register_unit(client: MlflowClient, store: Path, pool: str, meta: dict, seed: Seed, seed_version: str | None) -> tuple[ModelVersion, bool]:
    """Register a trained unit model once; returns (version, newly_registered). Re-points `current`."""
    name = f"{pool}.{meta['unit']}"
    mv = find_version(client, meta["key"])
    if mv is None:
        tags = unit_tags(meta, seed_version)
        params = {f"train.{k}": v for k, v in meta["train_config"].items()}
        metrics = {"final_loss": meta["final_loss"], "train_wall_s": meta["wall_s"]}
        logged = _log_model_run(client, store, meta["unit"], meta["weights"], seed, params, metrics, tags)
        mv = _register(client, name, logged, tags, CURRENT, f"Unit models of {meta['partition']} (unit {meta['unit']}).")
        return mv, True
    if current_version(client, name) != mv.version:
        client.set_registered_model_alias(name, CURRENT, mv.version)
    return mv, False


def current_version(client: MlflowClient, name: str) -> str | None:
    try:
        return client.get_model_version_by_alias(name, CURRENT).version
    except MlflowException:
        return None


def register_champion(client: MlflowClient, store: Path, pool: str, weights: str, seed: Seed, mixture: list[str], scores: dict, champion_key: str) -> ModelVersion:
    name = f"{pool}-champion"
    key = f"champion:{champion_key}"
    if (mv := find_version(client, key)) is None:
        tags = {T + "model_key": key, T + "mixture": " + ".join(mixture), T + "seed_digest": seed.digest, T + "code_version": __version__}
        metrics = {f"ppl.{k}": v for k, v in scores.items()}
        logged = _log_model_run(client, store, "champion " + " + ".join(mixture), weights, seed, {"mixture": ",".join(mixture)}, metrics, tags)
        return _register(client, name, logged, tags, CHAMPION, "The merged model of the best-ranked mixture.")
    client.set_registered_model_alias(name, CHAMPION, mv.version)
    return mv
