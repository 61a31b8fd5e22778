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
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from dataassess import __version__
from dataassess.rank import macro
from dataassess.seed import Seed
from dataassess.store import Store
from dataassess.types import UnitModel

from .tracking import UNITS_EXPERIMENT, created_or_found, dataset_input, log_values, open_run

PYFUNC_CODE = str(Path(__file__).with_name("unit_pyfunc.py"))
REQUIREMENTS = ["torch", "transformers", "safetensors", "dataassess"]
CURRENT, CHAMPION = "current", "champion"
T = "dataassess."


def unit_tags(model: UnitModel, seed_version: str | None) -> dict[str, str]:
    tags = {
        "partition": model.partition,
        "unit": model.unit,
        "unit_digest": model.unit_digest,
        "seed_digest": model.seed_digest,
        "train_config_hash": model.train_config_hash,
        "tokens": model.tokens,
        "code_version": model.code_version,
        "final_loss": f"{model.final_loss:.6f}",
        "model_key": model.key,
        "repeat": model.repeat,
        "source_tokens": model.source_tokens,
    }
    if seed_version:
        tags["seed_version"] = seed_version
    return {T + k: str(v) for k, v in tags.items()}


def find_version(client: MlflowClient, name: str, model_key: str) -> ModelVersion | None:
    """Is this (unit, seed, train config) already registered under this pool's name? One registry query.
    Pools that share a unit (a copied or renamed corpus root, a superset) each get their own version."""
    found = client.search_model_versions(f"name = '{name}' and tags.`{T}model_key` = '{model_key}'", max_results=1)
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
    mlflow.pyfunc.save_model(
        str(out),
        python_model=PYFUNC_CODE,
        artifacts={"weights": str(weights), "hf_folder": str(hf)},
        pip_requirements=REQUIREMENTS,
    )
    return out


def _register_model_run(
    client: MlflowClient,
    store: Store,
    name: str,
    run_name: str,
    weights: Path,
    seed: Seed,
    params: dict,
    metrics: dict,
    tags: dict,
    alias: str,
    description: str,
    version_description: str = "",
    span: tuple[float, float] | None = None,
    log_extra=None,
) -> ModelVersion:
    """A run holding the model as a pyfunc, then a version of `name` with all its tags, and the alias on it."""
    run_tags = {**tags, MLFLOW_RUN_NOTE: version_description} if version_description else tags
    with open_run(client, UNITS_EXPERIMENT, store, run_name, run_tags, span) as run_id:
        log_values(client, run_id, params, metrics)
        if log_extra:
            log_extra(run_id)
        with tempfile.TemporaryDirectory() as tmp:
            client.log_artifacts(run_id, str(save_pyfunc(Path(weights), seed, Path(tmp))), "model")
    if not client.search_registered_models(f"name = '{name}'", max_results=1):
        created_or_found(lambda: client.create_registered_model(name, description=description), lambda: None)
    mv = client.create_model_version(
        name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags, description=version_description
    )
    client.set_registered_model_alias(name, alias, mv.version)
    return mv


def unit_description(model: UnitModel, seed: Seed, seed_version: str | None) -> str:
    """The lineage of a unit model in words, for its version page."""
    seed_ref = (
        f"seed {seed.source} ({seed.digest[:12]}"
        + (f", registered as version {seed_version}" if seed_version else "")
        + ")"
    )
    return (
        f"Unit **{model.unit}** of partition **{model.partition}**: the {seed_ref} continue-pretrained on "
        f"{model.tokens:,} tokens "
        f"({model.source_tokens:,} distinct, repeated {model.repeat:.2f}x) in {model.steps} steps, "
        f"{model.wall_s:.0f} s; "
        f"final loss {model.final_loss:.3f}"
        + (
            f"; on its first sequences, loss {model.seed_loss:.3f} (seed) -> {model.end_loss:.3f}"
            if model.seed_loss is not None and model.end_loss is not None
            else ""
        )
        + f". Unit digest {model.unit_digest[:12]}, train config "
        f"{model.train_config_hash}."
    )


def log_training(client: MlflowClient, run_id: str, model: UnitModel, unit_tokens: Path | None) -> None:
    """The loss curve (one point per step, at the times training took) beside the seed's loss on the unit's
    first sequences (`seed_loss`; `first_sequences_loss` goes from it to the trained model's), and the unit's
    tokens as the run's training dataset."""
    start = int((model.finished_at - model.wall_s) * 1000) if model.finished_at else int(time.time() * 1000)
    step_ms = int(model.wall_s * 1000 / max(1, len(model.losses)))
    points = [Metric("train_loss", float(v), start + i * step_ms, i + 1) for i, v in enumerate(model.losses)]
    if model.seed_loss is not None and model.end_loss is not None:  # the same first sequences, before and after
        end, last = start + len(model.losses) * step_ms, len(model.losses)
        points += [
            Metric("seed_loss", float(model.seed_loss), start, 1),
            Metric("seed_loss", float(model.seed_loss), end, last),
            Metric("first_sequences_loss", float(model.seed_loss), start, 0),
            Metric("first_sequences_loss", float(model.end_loss), end, last),
        ]
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i : i + 1000])
    row = {k: getattr(model, k) for k in ("unit", "partition", "tokens", "source_tokens", "repeat", "unit_digest")}
    source = str(unit_tokens.resolve()) if unit_tokens else model.unit_digest
    client.log_inputs(run_id, datasets=[dataset_input(row, model.unit, source, "training", model.unit_digest[:32])])


def register_seed(client: MlflowClient, store: Store, pool: str, seed: Seed) -> ModelVersion:
    key = f"seed:{seed.digest}"
    if (mv := find_version(client, f"{pool}-seed", key)) is not None:
        return mv
    tags = {
        T + "seed_digest": seed.digest,
        T + "model_key": key,
        T + "source": seed.source,
        T + "code_version": __version__,
    }
    return _register_model_run(
        client,
        store,
        f"{pool}-seed",
        f"seed {seed.source}",
        seed.path / "model.safetensors",
        seed,
        {"base_model": seed.source},
        {},
        tags,
        CURRENT,
        "The seed every unit model continues from.",
    )


def register_unit(
    client: MlflowClient,
    store: Store,
    pool: str,
    model: UnitModel,
    weights: Path,
    seed: Seed,
    seed_version: str | None,
    unit_tokens: Path | None = None,
) -> tuple[ModelVersion, bool]:
    """Register a trained unit model once; returns (version, newly_registered). Re-points `current`; the version
    it leaves (the unit's text, the seed or the training config changed) is kept, tagged `superseded_by`."""
    name = f"{pool}.{model.unit}"
    mv = find_version(client, name, model.key)
    before = current_version(client, name)
    if mv is None:
        span = (model.finished_at - model.wall_s, model.finished_at) if model.finished_at else None
        mv = _register_model_run(
            client,
            store,
            name,
            model.unit,
            weights,
            seed,
            {f"train.{k}": v for k, v in model.train_config.items()},
            {"final_loss": model.final_loss, "train_wall_s": model.wall_s},
            unit_tags(model, seed_version),
            CURRENT,
            f"Unit models of {model.partition} (unit {model.unit}).",
            unit_description(model, seed, seed_version),
            span,
            lambda run_id: log_training(client, run_id, model, unit_tokens),
        )
        _supersede(client, name, before, mv)
        return mv, True
    if before != mv.version:
        client.set_registered_model_alias(name, CURRENT, mv.version)
        _supersede(client, name, before, mv)
    return mv, False


def _supersede(client: MlflowClient, name: str, old: str | None, new: ModelVersion) -> None:
    """`old` is no longer current: tag it with the version that replaced it; `new` (back in use) loses its tag."""
    if old is not None and old != new.version:
        client.set_model_version_tag(name, old, T + "superseded_by", new.version)
    if T + "superseded_by" in (new.tags or {}):
        client.delete_model_version_tag(name, new.version, T + "superseded_by")


def current_version(client: MlflowClient, name: str) -> str | None:
    try:
        return client.get_model_version_by_alias(name, CURRENT).version
    except MlflowException:
        return None


def register_champion(
    client: MlflowClient,
    store: Store,
    pool: str,
    weights: Path,
    seed: Seed,
    mixture: list[str],
    scores: dict,
    champion_key: str,
    ranking_run: tuple[str, str],
    ranked_by: str,
) -> ModelVersion:
    """The best mixture's merged model: a version per distinct mixture, its mixture and scores in its tags and
    description, linked to the ranking run (experiment id, run id) that made it champion."""
    name, key = f"{pool}-champion", f"champion:{champion_key}"
    exp_id, run_id = ranking_run
    scored = ", ".join(f"{k} {v:.2f}" for k, v in sorted(scores.items()))
    description = (
        f"Mixture **{' + '.join(mixture)}**, ranked #1 by {ranked_by} in ranking run "
        f"[{run_id[:8]}](#/experiments/{exp_id}/runs/{run_id}); perplexity {scored}."
    )
    tags = {
        T + "model_key": key,
        T + "mixture": " + ".join(mixture),
        T + "seed_digest": seed.digest,
        T + "code_version": __version__,
        T + "ranking_run_id": run_id,
        T + "macro": f"{macro(scores):.3f}",
        **{f"{T}ppl.{k}": f"{v:.3f}" for k, v in scores.items()},
    }
    if (mv := find_version(client, name, key)) is None:
        mv = _register_model_run(
            client,
            store,
            name,
            "champion " + " + ".join(mixture),
            weights,
            seed,
            {"mixture": ",".join(mixture)},
            {f"ppl.{k}": v for k, v in scores.items()},
            tags,
            CHAMPION,
            "The merged model of the best-ranked mixture.",
            description,
        )
    else:  # the same mixture is champion again: point it at the newest ranking run
        client.update_model_version(name, mv.version, description=description)
        client.set_model_version_tag(name, mv.version, T + "ranking_run_id", run_id)
    client.set_registered_model_alias(name, CHAMPION, mv.version)
    return mv
