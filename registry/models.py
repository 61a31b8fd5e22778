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

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from dataassess import __version__
from dataassess.seed import Seed
from dataassess.types import UnitModel

from .tracking import UNITS_EXPERIMENT, log_values, open_run

PYFUNC_CODE = str(Path(__file__).with_name("unit_pyfunc.py"))
REQUIREMENTS = ["torch", "transformers", "safetensors", "dataassess"]
CURRENT, CHAMPION = "current", "champion"
T = "dataassess."


def unit_tags(model: UnitModel, seed_version: str | None) -> dict[str, str]:
    tags = {
        "partition": model.partition, "unit": model.unit, "unit_digest": model.unit_digest,
        "seed_digest": model.seed_digest, "train_config_hash": model.train_config_hash, "tokens": model.tokens,
        "code_version": model.code_version, "final_loss": f"{model.final_loss:.6f}",
        "model_key": model.key, "repeat": model.repeat, "source_tokens": model.source_tokens,
    }
    if seed_version:
        tags["seed_version"] = seed_version
    return {T + k: str(v) for k, v in tags.items()}


def find_version(client: MlflowClient, model_key: str) -> ModelVersion | None:
    """Is this (unit, seed, train config) already registered? One registry query."""
    found = client.search_model_versions(f"tags.`{T}model_key` = '{model_key}'", max_results=1)
    return found[0] if found else None


def save_pyfunc(weights: Path, seed: Seed, folder: Path) -> Path:
    """The model as a pyfunc folder: safetensors weights + the seed's config and tokenizer (nothing pickled)."""
    import mlflow.pyfunc

    hf = folder / "hf"
    hf.mkdir()
    for f in seed.path.iterdir():
        if f.is_file() and f.suffix == ".json" and f.name not in ("seed.json", "seed_train.json"):
            shutil.copy(f, hf / f.name)
    out = folder / "model"
    mlflow.pyfunc.save_model(str(out), python_model=PYFUNC_CODE, artifacts={"weights": str(weights), "hf_folder": str(hf)},
                             pip_requirements=REQUIREMENTS)
    return out


def _register_model_run(client: MlflowClient, store: Path, name: str, run_name: str, weights: Path, seed: Seed,
                        params: dict, metrics: dict, tags: dict, alias: str, description: str) -> ModelVersion:
    """A run holding the model as a pyfunc, then a version of `name` with all its tags, and the alias on it."""
    with open_run(client, UNITS_EXPERIMENT, store, run_name, tags) as run_id:
        log_values(client, run_id, params, metrics)
        with tempfile.TemporaryDirectory() as tmp:
            client.log_artifacts(run_id, str(save_pyfunc(Path(weights), seed, Path(tmp))), "model")
    if not client.search_registered_models(f"name = '{name}'", max_results=1):
        client.create_registered_model(name, description=description)
    mv = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, alias, mv.version)
    return mv


def register_seed(client: MlflowClient, store: Path, pool: str, seed: Seed) -> ModelVersion:
    key = f"seed:{seed.digest}"
    if (mv := find_version(client, key)) is not None:
        return mv
    tags = {T + "seed_digest": seed.digest, T + "model_key": key, T + "source": seed.source, T + "code_version": __version__}
    return _register_model_run(client, store, f"{pool}-seed", f"seed {seed.source}", seed.path / "model.safetensors", seed,
                               {"base_model": seed.source}, {}, tags, CURRENT, "The seed every unit model continues from.")


def register_unit(client: MlflowClient, store: Path, pool: str, model: UnitModel, weights: Path, seed: Seed,
                  seed_version: str | None) -> tuple[ModelVersion, bool]:
    """Register a trained unit model once; returns (version, newly_registered). Re-points `current`."""
    name = f"{pool}.{model.unit}"
    mv = find_version(client, model.key)
    if mv is None:
        mv = _register_model_run(
            client, store, name, model.unit, weights, seed, {f"train.{k}": v for k, v in model.train_config.items()},
            {"final_loss": model.final_loss, "train_wall_s": model.wall_s}, unit_tags(model, seed_version), CURRENT,
            f"Unit models of {model.partition} (unit {model.unit}).",
        )
        return mv, True
    if current_version(client, name) != mv.version:
        client.set_registered_model_alias(name, CURRENT, mv.version)
    return mv, False


def current_version(client: MlflowClient, name: str) -> str | None:
    try:
        return client.get_model_version_by_alias(name, CURRENT).version
    except MlflowException:
        return None


def register_champion(client: MlflowClient, store: Path, pool: str, weights: Path, seed: Seed, mixture: list[str],
                      scores: dict, champion_key: str) -> ModelVersion:
    name, key = f"{pool}-champion", f"champion:{champion_key}"
    if (mv := find_version(client, key)) is None:
        tags = {T + "model_key": key, T + "mixture": " + ".join(mixture), T + "seed_digest": seed.digest, T + "code_version": __version__}
        return _register_model_run(client, store, name, "champion " + " + ".join(mixture), weights, seed, {"mixture": ",".join(mixture)},
                                   {f"ppl.{k}": v for k, v in scores.items()}, tags, CHAMPION, "The merged model of the best-ranked mixture.")
    client.set_registered_model_alias(name, CHAMPION, mv.version)
    return mv
